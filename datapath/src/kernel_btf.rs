//! The running kernel's BTF, parsed once and shared by every object load.
//!
//! aya's `EbpfLoader::new()` parses `/sys/kernel/btf/vmlinux` for each
//! loader: ~100 ms per object in a TCG guest (6.12), where a matrix cell
//! loads hundreds. Loaders here start from `EbpfLoader::without_btf()` (our
//! patch of aya, `vendor/README.md`) and borrow [`get`]'s copy. The copy is
//! kept for the life of the process unless [`keep_parsed`]`(false)`: the lab
//! loads objects all along; `tclab-agent` loads a few once, and a kept copy
//! (13 MB of heap for 6.18's 5.5 MB BTF) would overlap its ring buffer and
//! raise its peak RSS from 25 to 36 MiB (`tclab bench footprint`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aya::{Btf, EbpfLoader};

static CACHE: Mutex<Option<Arc<Btf>>> = Mutex::new(None);
static KEEP: AtomicBool = AtomicBool::new(true);

/// The kernel's BTF (parsed now if not kept), or `None` when the kernel has
/// none or it does not parse: CO-RE relocations then fail as they would
/// with `EbpfLoader::new()`.
pub fn get() -> Option<Arc<Btf>> {
    if !KEEP.load(Ordering::Relaxed) {
        return Btf::from_sys_fs().ok().map(Arc::new);
    }
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.is_none() {
        *cache = Btf::from_sys_fs().ok().map(Arc::new);
    }
    cache.clone()
}

/// Whether [`get`] keeps what it parsed for the next call (the default);
/// `false` also drops the kept copy (loaders holding it finish with theirs).
pub fn keep_parsed(keep: bool) {
    KEEP.store(keep, Ordering::Relaxed);
    if !keep {
        forget();
    }
}

/// Drop the kept copy (loaders holding it keep theirs until they are done).
pub fn forget() {
    *CACHE.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// A loader with `btf` as its target BTF (from [`get`]).
pub fn loader(btf: Option<&Btf>) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::without_btf();
    loader.btf(btf);
    loader
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_kept() -> bool {
        CACHE.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    #[test]
    fn one_parse_is_shared_until_forgotten() {
        let Some(first) = get() else {
            eprintln!("SKIPPED one_parse_is_shared_until_forgotten: no /sys/kernel/btf/vmlinux on this kernel");
            return;
        };
        let second = get().expect("parsed once, kept");
        assert!(Arc::ptr_eq(&first, &second), "the second get() parsed again");
        forget();
        assert!(!is_kept());
        let third = get().expect("parsed again after forget");
        assert!(!Arc::ptr_eq(&first, &third), "forget() kept the old copy");
        keep_parsed(false);
        let (a, b) = (get().expect("parsed"), get().expect("parsed"));
        assert!(!Arc::ptr_eq(&a, &b) && !is_kept(), "keep_parsed(false) still keeps a copy");
        keep_parsed(true);
        let (a, b) = (get().expect("parsed"), get().expect("kept"));
        assert!(Arc::ptr_eq(&a, &b), "keep_parsed(true) did not keep again");
    }
}
