//! The cached kernel a QEMU test boots, or a loud skip (no QEMU, or the
//! kernel not fetched). Included with `#[path]` by the tests that boot one.

use tclab_lab::kernels::{self, Cache, CachedKernel, Catalog};

/// Kernel `name` ("5.10", …) from the cache, verified; `None` (a counted
/// skip, a failure under TCLAB_REQUIRE_ALL) when QEMU or the kernel is missing.
pub fn cached_kernel(test: &str, name: &str) -> Option<CachedKernel> {
    if !tclab_net::require::program(test, "qemu-system-x86_64", "apt-get install qemu-system-x86 (see .ci/run)") {
        return None;
    }
    let catalog = Catalog::load(&kernels::default_manifest_dir()).expect("manifests load");
    let cache = Cache::default_location().expect("cache location");
    let manifest = catalog.get(name).expect("manifest");
    if !tclab_net::require::path(test, &cache.dir_for(manifest).join("verified"), "run `tclab kernels fetch` first") {
        return None;
    }
    Some(cache.kernel(manifest).expect("verified kernel"))
}
