//! Seeding the guest's random number generator from the host.
//!
//! A VM with no entropy device and a CPU model without RDRAND (QEMU's TCG
//! default) initialises its CRNG only seconds after boot (~9.8 s of a 5.10
//! guest's uptime, measured): until then `getrandom(2)` blocks, and with it
//! the first span id an agent draws. The host puts fresh random bytes in
//! each cell's request; init credits them to the kernel's pool with
//! `RNDADDENTROPY`, as a boot loader's or systemd's credited seed would, so
//! the CRNG is ready before any work starts. Every kernel since 3.x takes
//! this ioctl, whatever its `CONFIG_RANDOM_TRUST_*`.

use std::os::fd::AsRawFd;

/// Bytes of seed per boot: 512 bits, over what any kernel wants credited
/// before it calls its CRNG ready (128 bits on 5.10, 256 on 5.18+).
pub const SEED_BYTES: usize = 64;

/// Fresh seed bytes for one boot, hex-encoded for the request.
pub fn new_seed() -> String {
    let mut bytes = [0u8; SEED_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// `struct rand_pool_info` with a fixed-size buffer.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; SEED_BYTES],
}

// RNDADDENTROPY is _IOW('R', 0x03, int[2]): the size is the header's, the
// buffer follows it.
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
    RandPoolInfo
);

/// Credit `seed_hex` (from [`new_seed`]) to the kernel's pool.
///
/// # Errors
/// When the seed is not `SEED_BYTES` bytes of hex, or the kernel refuses it.
pub fn credit(seed_hex: &str) -> Result<(), String> {
    let bytes = decode(seed_hex).ok_or_else(|| format!("the seed is not {SEED_BYTES} bytes of hex"))?;
    let info = RandPoolInfo { entropy_count: (SEED_BYTES * 8) as libc::c_int, buf_size: SEED_BYTES as libc::c_int, buf: bytes };
    let random = std::fs::OpenOptions::new().write(true).open("/dev/random").map_err(|e| format!("open /dev/random: {e}"))?;
    // SAFETY: `info` is a valid rand_pool_info whose buffer holds buf_size bytes.
    unsafe { rnd_add_entropy(random.as_raw_fd(), &info) }.map_err(|e| format!("RNDADDENTROPY: {e}"))?;
    Ok(())
}

/// Whether `getrandom(2)` would return without blocking now.
pub fn crng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: writes at most 1 byte into `b`.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) == 1 }
}

fn decode(seed_hex: &str) -> Option<[u8; SEED_BYTES]> {
    let mut out = [0u8; SEED_BYTES];
    hex::decode_to_slice(seed_hex, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_fresh_and_decode_to_their_bytes() {
        let (a, b) = (new_seed(), new_seed());
        assert_ne!(a, b);
        let bytes = decode(&a).expect("a new seed decodes");
        assert_eq!(hex::encode(bytes), a);
    }

    #[test]
    fn a_short_or_non_hex_seed_is_refused() {
        assert!(decode("abcd").is_none());
        assert!(decode(&"zz".repeat(SEED_BYTES)).is_none());
        assert!(credit("abcd").unwrap_err().contains("64 bytes of hex"));
    }
}
