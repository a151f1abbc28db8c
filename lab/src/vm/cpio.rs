//! A newc ("new ASCII") cpio writer, the format the kernel unpacks as
//! initramfs. Spec: <https://www.kernel.org/doc/html/latest/driver-api/early-userspace/buffer-format.html>.
//!
//! Every entry is a 110-byte ASCII header (magic plus 13 eight-digit hex
//! fields), the NUL-terminated name padded to 4 bytes, then the data padded
//! to 4 bytes. The archive ends with an entry named `TRAILER!!!`. The kernel
//! does not create missing parent folders, so the builder adds them.

use std::collections::BTreeSet;

/// The newc magic: ASCII `070701` (no checksum variant).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An entry that cannot be represented (too large, bad name).
#[derive(Debug, thiserror::Error)]
#[error("failed to add {path} to the cpio archive: {reason}")]
pub struct CpioError {
    /// The archive path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Builds one newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioArchiveBuilder {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

/// What goes in a header besides the name and data.
struct Header {
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

impl CpioArchiveBuilder {
    /// An empty archive.
    pub fn new() -> CpioArchiveBuilder {
        CpioArchiveBuilder { buf: Vec::new(), next_ino: 1, dirs: BTreeSet::new() }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn clean(path: &str) -> Result<String, CpioError> {
        let p = path.trim_start_matches('/').trim_end_matches('/');
        if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") || p.contains('\0') {
            return Err(CpioError { path: path.to_owned(), reason: "not a clean absolute path".into() });
        }
        Ok(p.to_owned())
    }

    /// Add every missing parent folder of `path` (mode 0755).
    fn parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut prefix = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if !self.dirs.contains(&prefix) {
                self.dirs.insert(prefix.clone());
                self.entry(&prefix.clone(), Header { mode: S_IFDIR | 0o755, nlink: 2, rdev: (0, 0) }, &[])?;
            }
        }
        Ok(())
    }

    /// Write one entry with checked sizes.
    fn entry(&mut self, name: &str, h: Header, data: &[u8]) -> Result<(), CpioError> {
        let too_big = |what: &str| CpioError { path: name.to_owned(), reason: format!("{what} does not fit in 32 bits") };
        let filesize = u32::try_from(data.len()).map_err(|_| too_big("file size"))?;
        let namesize = u32::try_from(name.len().checked_add(1).ok_or_else(|| too_big("name size"))?)
            .map_err(|_| too_big("name size"))?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.checked_add(1).ok_or_else(|| too_big("inode count"))?;
        let fields = [ino, h.mode, 0, 0, h.nlink, 0, filesize, 0, 0, h.rdev.0, h.rdev.1, namesize, 0];
        self.buf.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A folder (parents added as needed).
    pub fn append_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let p = Self::clean(path)?;
        self.parents(&p)?;
        if self.dirs.insert(p.clone()) {
            self.entry(&p, Header { mode: S_IFDIR | (mode & 0o7777), nlink: 2, rdev: (0, 0) }, &[])?;
        }
        Ok(())
    }

    /// A regular file.
    pub fn append_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        let p = Self::clean(path)?;
        self.parents(&p)?;
        self.entry(&p, Header { mode: S_IFREG | (mode & 0o7777), nlink: 1, rdev: (0, 0) }, data)
    }

    /// A symbolic link (the target is the data).
    pub fn append_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let p = Self::clean(path)?;
        self.parents(&p)?;
        self.entry(&p, Header { mode: S_IFLNK | 0o777, nlink: 1, rdev: (0, 0) }, target.as_bytes())
    }

    /// A character device node, e.g. `/dev/console` (5, 1), which the
    /// kernel opens for init's stdio before devtmpfs is mounted.
    pub fn append_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        let p = Self::clean(path)?;
        self.parents(&p)?;
        self.entry(&p, Header { mode: S_IFCHR | (mode & 0o7777), nlink: 1, rdev: (major, minor) }, &[])
    }

    /// Append the trailer and return the archive (a multiple of 4 bytes, so
    /// another archive can be concatenated after it).
    pub fn finish(mut self) -> Result<Vec<u8>, CpioError> {
        self.entry(TRAILER, Header { mode: 0, nlink: 1, rdev: (0, 0) }, &[])?;
        Ok(self.buf)
    }
}

/// Concatenate archives: the kernel unpacks them in order, later entries
/// replacing earlier ones. Each part is padded to 4 bytes.
pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 3).sum());
    for part in parts {
        out.extend_from_slice(part);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}
