//! Shrinking `/init` for the guest: a debug build of tclab is ~50 MB (line
//! tables only; ~120 MB with full debug info), of which ~28 MB are DWARF and
//! symbol tables that the dynamic loader never maps. The kernel has to
//! unpack every byte of the initramfs (slowly under TCG), so the guest gets
//! the file cut after its last loaded segment, with the section header table
//! dropped. What runs is byte-identical; only symbolized backtraces in the
//! guest are lost.

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};

/// ELF64 header offsets of e_shoff, e_shnum, e_shstrndx.
const E_SHOFF: usize = 0x28;
const E_SHNUM: usize = 0x3c;
const E_SHSTRNDX: usize = 0x3e;

/// `elf` without the bytes past its last segment; `None` when the file
/// cannot be cut safely (not ELF64 little-endian, or nothing to cut, or the
/// section headers sit inside a segment).
pub fn strip_unmapped(elf: &[u8]) -> Option<Vec<u8>> {
    let file = ElfFile64::<object::LittleEndian>::parse(elf).ok()?;
    let endian = file.endian();
    let end = file
        .elf_program_headers()
        .iter()
        .map(|ph| ph.p_offset(endian).saturating_add(ph.p_filesz(endian)))
        .max()?;
    let end = usize::try_from(end).ok()?;
    let shoff = usize::try_from(file.elf_header().e_shoff(endian)).ok()?;
    if end >= elf.len() || (shoff != 0 && shoff < end) {
        return None;
    }
    let mut out = elf[..end].to_vec();
    out[E_SHOFF..E_SHOFF + 8].fill(0);
    out[E_SHNUM..E_SHNUM + 2].fill(0);
    out[E_SHSTRNDX..E_SHSTRNDX + 2].fill(0);
    Some(out)
}
