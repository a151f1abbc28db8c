//! ELF vmlinux from a bzImage, for QEMU's PVH entry (`-machine microvm`
//! boots an ELF kernel directly, skipping the real-mode setup and the
//! in-guest decompression, which is slow under TCG).
//!
//! Boot protocol: <https://www.kernel.org/doc/html/latest/arch/x86/boot.html>.
//! The protected-mode part starts after `(setup_sects + 1) * 512` bytes; from
//! protocol 2.08 `payload_offset`/`payload_length` locate the compressed
//! vmlinux inside it. Older or odd images fall back to scanning for a
//! compression magic, as the kernel's `scripts/extract-vmlinux` does.

use std::io::Read;

const ELF_MAGIC: &[u8] = b"\x7fELF";
const HDRS_OFFSET: usize = 0x202;
const SETUP_SECTS_OFFSET: usize = 0x1f1;
const VERSION_OFFSET: usize = 0x206;
const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;

/// Compressions Debian and Ubuntu kernels use, with their magic numbers.
const MAGICS: &[(&str, &[u8])] = &[
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("gzip", b"\x1f\x8b\x08"),
    // Debian's 6.1 cloud kernels use the LZ4 legacy frame.
    ("lz4", LZ4_LEGACY_MAGIC),
];

/// LZ4 legacy frame magic (0x184C2102, little endian), as the kernel's
/// `lz4 -l` compression writes it.
const LZ4_LEGACY_MAGIC: &[u8] = b"\x02\x21\x4c\x18";

/// True when `bytes` is already an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF_MAGIC)
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?.try_into().ok().map(u32::from_le_bytes)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)?.try_into().ok().map(u16::from_le_bytes)
}

/// The compressed payload located through the boot header, when it is valid.
fn payload_from_header(bz: &[u8]) -> Option<&[u8]> {
    if bz.get(HDRS_OFFSET..HDRS_OFFSET + 4)? != b"HdrS" || le_u16(bz, VERSION_OFFSET)? < 0x208 {
        return None;
    }
    let setup_sects = match *bz.get(SETUP_SECTS_OFFSET)? {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1).checked_mul(512)?;
    let start = pm_start.checked_add(usize::try_from(le_u32(bz, PAYLOAD_OFFSET_OFFSET)?).ok()?)?;
    let end = start.checked_add(usize::try_from(le_u32(bz, PAYLOAD_LENGTH_OFFSET)?).ok()?)?;
    bz.get(start..end)
}

fn decompress(kind: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match kind {
        "xz" => {
            xz2::read::XzDecoder::new(data).read_to_end(&mut out)?;
        }
        "lz4" => out = lz4_legacy(data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        "zstd" => {
            zstd::stream::read::Decoder::new(data)?.single_frame().read_to_end(&mut out)?;
        }
        _ => {
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// The uncompressed ELF vmlinux inside a bzImage (or `image` itself when it
/// is already ELF). The error says what was tried.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, String> {
    if is_elf(image) {
        return Ok(image.to_vec());
    }
    if let Some(payload) = payload_from_header(image) {
        for (kind, magic) in MAGICS {
            if payload.starts_with(magic) {
                return match decompress(kind, payload) {
                    Ok(elf) if is_elf(&elf) => Ok(elf),
                    Ok(_) => Err(format!("the {kind} payload named by the boot header is not an ELF file")),
                    Err(e) => Err(format!("failed to decompress the {kind} payload named by the boot header: {e}")),
                };
            }
        }
    }
    scan_for_payload(image)
}

/// extract-vmlinux's approach: try every compression magic at every offset.
fn scan_for_payload(image: &[u8]) -> Result<Vec<u8>, String> {
    for (kind, magic) in MAGICS {
        let mut from = 0;
        while let Some(pos) = find(&image[from..], magic) {
            let at = from + pos;
            if let Ok(elf) = decompress(kind, &image[at..])
                && is_elf(&elf)
            {
                return Ok(elf);
            }
            from = at + 1;
        }
    }
    Err("no xz, zstd or gzip payload that decompresses to an ELF vmlinux (is this a bzImage?)".into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode an LZ4 legacy frame: magic, then `[u32 LE size][block]…`; the
/// kernel appends the 4-byte uncompressed size, so a tail of 4 bytes or
/// fewer (or the magic of a following frame) ends it.
pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut rest = data.strip_prefix(LZ4_LEGACY_MAGIC).ok_or("not an LZ4 legacy frame")?;
    let mut out = Vec::new();
    while rest.len() > 4 {
        let size = le_u32(rest, 0).ok_or("truncated block size")?;
        if size.to_le_bytes() == LZ4_LEGACY_MAGIC {
            rest = &rest[4..];
            continue;
        }
        let size = usize::try_from(size).map_err(|_| "block size overflow")?;
        let block = rest.get(4..4 + size).ok_or_else(|| format!("block of {size} bytes runs past the end"))?;
        lz4_block(block, &mut out)?;
        rest = &rest[4 + size..];
    }
    Ok(out)
}

/// LZ4 block format: <https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md>.
fn lz4_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    let byte = |i: &mut usize| -> Result<usize, String> {
        let b = *block.get(*i).ok_or("truncated LZ4 block")?;
        *i += 1;
        Ok(usize::from(b))
    };
    let length = |i: &mut usize, nibble: usize| -> Result<usize, String> {
        let mut len = nibble;
        if nibble == 15 {
            loop {
                let b = byte(i)?;
                len = len.checked_add(b).ok_or("LZ4 length overflow")?;
                if b != 255 {
                    break;
                }
            }
        }
        Ok(len)
    };
    while i < block.len() {
        let token = byte(&mut i)?;
        let literals = length(&mut i, token >> 4)?;
        let lit = block.get(i..i + literals).ok_or("LZ4 literals run past the block")?;
        out.extend_from_slice(lit);
        i += literals;
        if i == block.len() {
            break;
        }
        let offset = byte(&mut i)? | (byte(&mut i)? << 8);
        let matched = length(&mut i, token & 15)?.checked_add(4).ok_or("LZ4 length overflow")?;
        if offset == 0 || offset > out.len() {
            return Err(format!("LZ4 match offset {offset} outside the {} bytes decoded", out.len()));
        }
        let start = out.len() - offset;
        // Byte by byte: a match may overlap the bytes it produces.
        for k in 0..matched {
            let b = out[start + k];
            out.push(b);
        }
    }
    Ok(())
}
