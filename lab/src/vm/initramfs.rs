//! The initramfs: a shared base archive (init, its libraries, the kernel's
//! modules, device nodes) and a small per-run archive (the request and the
//! payload) concatenated after it.

use std::path::{Path, PathBuf};

use super::VmError;
use super::cpio::CpioArchiveBuilder;
use super::elfdeps;
use crate::guest::{GuestRequest, MODULES_DIR, REQUEST_PATH};
use crate::kernels::CachedKernel;

/// A host file or folder and where it appears in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Host path (a folder is copied recursively).
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
}

fn read(path: &Path) -> Result<Vec<u8>, VmError> {
    std::fs::read(path).map_err(|source| VmError::Io { op: "read", path: path.to_owned(), source })
}

/// Guest paths of the kernel's modules, in load order.
pub fn guest_module_paths(kernel: &CachedKernel) -> Vec<String> {
    kernel.info.modules.iter().map(|m| format!("{MODULES_DIR}/{m}.ko")).collect()
}

/// `/init` (= `init_exe`), the libraries it needs, the modules, and the
/// folders and device nodes init needs before it mounts anything.
pub fn base_archive(init_exe: &Path, kernel: &CachedKernel) -> Result<Vec<u8>, VmError> {
    let mut cpio = CpioArchiveBuilder::new();
    for dir in ["/dev", "/proc", "/sys", "/run", "/tmp", "/tclab"] {
        cpio.append_dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdin/stdout/stderr before
    // anything is mounted: the node must be in the archive.
    cpio.append_char_device("/dev/console", 0o600, 5, 1)?;
    cpio.append_char_device("/dev/null", 0o666, 1, 3)?;
    let exe = read(init_exe)?;
    cpio.append_file("/init", 0o755, &super::strip::strip_unmapped(&exe).unwrap_or(exe))?;
    for lib in elfdeps::shared_libraries(init_exe)? {
        // Same path as on the host; symlinks are followed by the read.
        cpio.append_file(&lib.to_string_lossy(), 0o755, &read(&lib)?)?;
    }
    for (name, host) in kernel.info.modules.iter().zip(kernel.module_paths()) {
        cpio.append_file(&format!("{MODULES_DIR}/{name}.ko"), 0o644, &read(&host)?)?;
    }
    Ok(cpio.finish()?)
}

/// A base archive on disk, shared by the cells of one kernel and init.
/// Its temporary folder goes away when the last user drops it.
#[derive(Debug)]
pub struct BaseImage {
    _dir: tempfile::TempDir,
    /// The archive file.
    pub path: PathBuf,
}

/// Write [`base_archive`] to a temporary file.
pub fn write_base(init_exe: &Path, kernel: &CachedKernel) -> Result<BaseImage, VmError> {
    let dir = tempfile::Builder::new()
        .prefix(&super::tempdirs::prefix("tclab-initrd-"))
        .tempdir()
        .map_err(|source| VmError::Io { op: "create a temporary folder in", path: std::env::temp_dir(), source })?;
    let path = dir.path().join("base.cpio");
    let bytes = base_archive(init_exe, kernel)?;
    std::fs::write(&path, bytes).map_err(|source| VmError::Io { op: "write", path: path.clone(), source })?;
    Ok(BaseImage { _dir: dir, path })
}

/// `out` = the base archive, then the per-run archive (the kernel unpacks
/// both; the base is a multiple of 4 bytes, so the second starts aligned).
pub fn write_cell_initrd(base: &BaseImage, run: &[u8], out: &Path) -> Result<(), VmError> {
    use std::io::Write;
    // copy_file_range: no round trip of the (large) base through userspace.
    std::fs::copy(&base.path, out).map_err(|source| VmError::Io { op: "copy the base initramfs to", path: out.to_owned(), source })?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .map_err(|source| VmError::Io { op: "open", path: out.to_owned(), source })?;
    let len = file.metadata().map_err(|source| VmError::Io { op: "stat", path: out.to_owned(), source })?.len();
    let pad = vec![0u8; usize::try_from((4 - len % 4) % 4).unwrap_or(0)];
    file.write_all(&pad)
        .and_then(|()| file.write_all(run))
        .map_err(|source| VmError::Io { op: "append the run archive to", path: out.to_owned(), source })
}

/// The request and the payload.
pub fn run_archive(request: &GuestRequest, payload: &[PayloadFile]) -> Result<Vec<u8>, VmError> {
    let mut cpio = CpioArchiveBuilder::new();
    let json = serde_json::to_vec_pretty(request).map_err(|e| VmError::Request(e.to_string()))?;
    cpio.append_file(REQUEST_PATH, 0o644, &json)?;
    for p in payload {
        append_tree(&mut cpio, &p.host, &p.guest)?;
    }
    Ok(cpio.finish()?)
}

fn append_tree(cpio: &mut CpioArchiveBuilder, host: &Path, guest: &str) -> Result<(), VmError> {
    let meta = std::fs::metadata(host).map_err(|source| VmError::Io { op: "stat", path: host.to_owned(), source })?;
    if !meta.is_dir() {
        return Ok(cpio.append_file(guest, 0o644, &read(host)?)?);
    }
    cpio.append_dir(guest, 0o755)?;
    let entries = std::fs::read_dir(host).map_err(|source| VmError::Io { op: "list", path: host.to_owned(), source })?;
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let name = child.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        append_tree(cpio, &child, &format!("{}/{name}", guest.trim_end_matches('/')))?;
    }
    Ok(())
}
