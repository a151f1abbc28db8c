//! A batched AF_PACKET sender for the replay benchmark: `sendmmsg` of up to
//! [`MAX_BATCH`] frames per system call, optionally with
//! `PACKET_QDISC_BYPASS`. (The lab's own [`tclab_net::packet::Injector`]
//! sends one frame per `sendto`, which is right for replay, where every
//! packet is waited for, and is measured here as the other baseline.)
//!
//! On a veth, `PACKET_QDISC_BYPASS` skips the sending device's qdisc *and its
//! TC egress*, so it is only used on the peer, whose frames are measured at
//! the device's TC ingress.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PACKET_QDISC_BYPASS` from linux/if_packet.h.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// Frames per `sendmmsg`.
pub const MAX_BATCH: usize = 64;

/// A sending AF_PACKET socket on one device.
#[derive(Debug)]
pub struct BatchInjector {
    fd: OwnedFd,
    ifindex: u32,
}

impl BatchInjector {
    /// Open on `ifindex` of the calling thread's namespace (call inside `NetNs::run`).
    ///
    /// # Errors
    /// The socket cannot be made, bound or configured.
    pub fn open(ifindex: u32, qdisc_bypass: bool) -> io::Result<BatchInjector> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sll = sockaddr(ifindex, 0, None)?;
        // SAFETY: `sll` is a valid sockaddr_ll of the given size.
        let ret = unsafe {
            libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        if qdisc_bypass {
            let one: libc::c_int = 1;
            // SAFETY: `one` is a live c_int for the call.
            let ret = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(BatchInjector { fd, ifindex })
    }

    /// Send every frame, `batch` per `sendmmsg` (1 = one `sendmsg` each).
    /// Returns how many the device took (frames dropped on the way, e.g.
    /// `ENOBUFS`, are not retried).
    ///
    /// # Errors
    /// A send failed for another reason than a full queue.
    pub fn send_all(&self, frames: &[&[u8]], batch: usize) -> io::Result<u64> {
        let batch = batch.clamp(1, MAX_BATCH);
        let mut sent = 0u64;
        let mut addrs: Vec<libc::sockaddr_ll> = Vec::with_capacity(batch);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(batch);
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(batch);
        for chunk in frames.chunks(batch) {
            addrs.clear();
            iovs.clear();
            msgs.clear();
            for f in chunk {
                if f.len() < 14 {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}-byte frame", f.len())));
                }
                addrs.push(sockaddr(self.ifindex, u16::from_be_bytes([f[12], f[13]]), Some(&f[..6]))?);
                iovs.push(libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() });
            }
            for i in 0..chunk.len() {
                // SAFETY: plain data; zero is a valid initial msghdr.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_ll).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                msgs.push(m);
            }
            let mut off = 0;
            while off < msgs.len() {
                // SAFETY: every pointer in msgs[off..] refers to addrs/iovs/frames alive for the call.
                let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs[off..].as_mut_ptr(), (msgs.len() - off) as libc::c_uint, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        // dropped by the device / qdisc: skip the frame
                        Some(libc::ENOBUFS) => off += 1,
                        Some(libc::EINTR) => {}
                        _ => return Err(e),
                    }
                } else {
                    off += n as usize;
                    sent += n as u64;
                    if n == 0 {
                        off += 1;
                    }
                }
            }
        }
        Ok(sent)
    }
}

fn sockaddr(ifindex: u32, protocol: u16, dest: Option<&[u8]>) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if let Some(mac) = dest {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac[..6]);
    }
    Ok(sll)
}
