//! AF_PACKET injection and capture around a device's TC hooks.
//!
//! Where each socket sits in the kernel's path (verified on the host kernel by
//! `tests/packet.rs`, which attaches dropping classifiers and watches frames
//! vanish or not):
//!
//! * [`Injector`] on the **peer** of the device under test: the frame crosses
//!   the veth and arrives at the device's TC **ingress**. [`Injector`] on the
//!   **device** itself: `dev_queue_xmit` runs the device's TC **egress** (the
//!   socket does not set `PACKET_QDISC_BYPASS`), then the frame reaches the peer.
//! * [`Capture::after_ingress`] (sockets bound to specific ethertypes on the
//!   device): those handlers sit on the device's `ptype_specific` list, which
//!   `__netif_receive_skb_core` walks **after** `sch_handle_ingress`, so a frame
//!   a TC ingress program drops is not seen. `ETH_P_ALL` sockets on the device
//!   (`Capture::all`) are taps that run **before** TC ingress and see it all.
//! * [`Capture::all`] on the **peer**: what left the device after its TC
//!   egress. A frame the device's TC egress drops never reaches the peer.
//!
//! VLAN (verified on the host kernel): the receive path moves an
//! 802.1Q/802.1ad tag into skb metadata before any tap runs; [`Capture::all`]
//! reads it back from `PACKET_AUXDATA` and reinserts it, so tapped bytes equal
//! sent bytes. TC ingress programs see the tag as metadata (`skb->vlan_tci`).
//! After TC ingress, a frame whose VID has no VLAN device gets its tag
//! *cleared* and `pkt_type` set to `PACKET_OTHERHOST`, and is delivered to
//! handlers of its inner ethertype: [`Capture::after_ingress`] therefore sees
//! such frames untagged, under their inner ethertype, with
//! [`CapturedFrame::pkt_type`] = 3. No socket can recover that tag.
//!
//! Egress drops: when TC egress drops a frame sent with [`Injector`],
//! `dev_queue_xmit` reports `NET_XMIT_DROP` and `sendto` fails with `ENOBUFS`;
//! [`Injector::transmit`] reports that as [`Sent::DroppedOnEgress`].
//!
//! veth delivers frames sent with AF_PACKET through `netif_rx`, which usually
//! completes before `send` returns, but not always: [`Capture::drain`] waits
//! until the device has been quiet for a while. Frames are returned in arrival
//! order; frames from several sockets are merged by kernel receive timestamp
//! without reordering any one socket's frames.
//!
//! Sockets take the namespace of the thread that opens them: call `open`,
//! `after_ingress` and `all` inside [`crate::NetNs::run`]. The returned values
//! may then be used from any thread.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::NetError;

// Linux UAPI values (asm-generic; identical on x86_64 and aarch64).
const SO_TIMESTAMPNS: libc::c_int = 35;
const SO_RCVBUFFORCE: libc::c_int = 33;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_VLAN_VALID: u32 = 0x10;
const TP_STATUS_VLAN_TPID_VALID: u32 = 0x40;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_8021Q: u16 = 0x8100;
/// Receive buffer per capture socket: a whole replay burst must fit.
const RCVBUF_BYTES: libc::c_int = 8 << 20;
/// Ceiling on one [`Capture::drain`], should frames never stop arriving.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Largest frame read (a veth frame never exceeds 64 KiB; GRO is off).
const MAX_FRAME: usize = 65536;

/// `struct tpacket_auxdata` from linux/if_packet.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// `struct tpacket_stats` from linux/if_packet.h.
#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

fn packet_err(op: impl Into<String>, ifindex: u32) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Packet { op: op.into(), ifindex, source }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the given size for the call.
    let ret = unsafe {
        libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    cvt(ret).map(|_| ())
}

/// An AF_PACKET socket with protocol 0 (so it receives nothing until bound).
fn packet_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_ll(ifindex: u32, protocol: u16) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(sll)
}

fn bind(fd: RawFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    let sll = sockaddr_ll(ifindex, protocol)?;
    // SAFETY: `sll` is a valid sockaddr_ll for the length given.
    let ret = unsafe {
        libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    cvt(ret).map(|_| ())
}

/// AF_PACKET SOCK_RAW socket bound to an ifindex for sending whole Ethernet
/// frames. Sending on the peer of the device under test makes frames arrive
/// at the device's TC ingress; sending on the device itself makes them cross
/// its TC egress. It receives nothing.
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
    ifindex: u32,
}

impl Injector {
    /// Open an injector on `ifindex` of the calling thread's namespace.
    ///
    /// # Errors
    /// [`NetError::Packet`] when the socket cannot be made or bound (`ENODEV`).
    pub fn open(ifindex: u32) -> Result<Injector, NetError> {
        let fd = packet_socket(0).map_err(packet_err("open injector", ifindex))?;
        bind(fd.as_raw_fd(), ifindex, 0).map_err(packet_err("bind injector", ifindex))?;
        Ok(Injector { fd, ifindex })
    }

    /// The device frames are sent on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Send one whole Ethernet frame (destination MAC first, no FCS). A frame
    /// that the sending device's TC egress (or qdisc) drops is not an error
    /// here: use [`Injector::transmit`] to tell.
    ///
    /// # Errors
    /// As [`Injector::transmit`].
    pub fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        self.transmit(frame).map(|_| ())
    }

    /// Send one whole Ethernet frame and say whether the sending device's
    /// transmit path took it.
    ///
    /// # Errors
    /// [`NetError::Invalid`] for frames shorter than an Ethernet header,
    /// [`NetError::Packet`] when the kernel refuses (e.g. `EMSGSIZE` above the MTU).
    pub fn transmit(&self, frame: &[u8]) -> Result<Sent, NetError> {
        if frame.len() < 14 {
            return Err(NetError::Invalid {
                op: "send frame",
                object: format!("{}-byte frame on ifindex {}", frame.len(), self.ifindex),
                reason: "shorter than an Ethernet header (14 bytes)".to_owned(),
            });
        }
        // The ethertype sets skb->protocol, as the stack's own frames have it.
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let mut sll = sockaddr_ll(self.ifindex, ethertype).map_err(packet_err("send frame", self.ifindex))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            // A blocking AF_PACKET send only fails with ENOBUFS when
            // dev_queue_xmit returned NET_XMIT_DROP (TC egress / qdisc drop).
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(Sent::DroppedOnEgress);
            }
            return Err(packet_err(format!("send {}-byte frame", frame.len()), self.ifindex)(e));
        }
        if sent as usize != frame.len() {
            let short = io::Error::other(format!("sent {sent} of {} bytes", frame.len()));
            return Err(packet_err("send frame", self.ifindex)(short));
        }
        Ok(Sent::Transmitted)
    }
}

/// What became of a frame given to [`Injector::transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The device's transmit path accepted it (on a veth: handed to the peer).
    Transmitted,
    /// TC egress (or the qdisc) of the sending device dropped it.
    DroppedOnEgress,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// The whole Ethernet frame, with any VLAN tag the kernel had moved to
    /// metadata put back in place.
    pub data: Vec<u8>,
    /// Kernel receive time (CLOCK_REALTIME since the Unix epoch).
    pub ts: Duration,
    /// `sll_pkttype`: 0 host, 1 broadcast, 2 multicast, 3 other host.
    pub pkt_type: u8,
}

/// A capture on one device: one socket per ethertype ([`Capture::after_ingress`])
/// or one `ETH_P_ALL` socket ([`Capture::all`]).
#[derive(Debug)]
pub struct Capture {
    socks: Vec<OwnedFd>,
    ifindex: u32,
}

impl Capture {
    /// What `ifindex` delivers AFTER its TC ingress, for the given ethertypes
    /// (host order; one socket each). VLAN-tagged frames count under their
    /// inner ethertype.
    ///
    /// # Errors
    /// [`NetError::Invalid`] for an empty list or `ETH_P_ALL` (use
    /// [`Capture::all`]), [`NetError::Packet`] when a socket fails.
    pub fn after_ingress(ifindex: u32, ethertypes: &[u16]) -> Result<Capture, NetError> {
        if ethertypes.is_empty() || ethertypes.contains(&ETH_P_ALL) {
            return Err(NetError::Invalid {
                op: "open capture after ingress",
                object: format!("ethertypes {ethertypes:04x?} on ifindex {ifindex}"),
                reason: "needs specific ethertypes (ETH_P_ALL taps run before TC ingress)".to_owned(),
            });
        }
        let socks = ethertypes.iter().map(|&t| capture_socket(ifindex, t, false)).collect::<Result<_, _>>()?;
        Ok(Capture { socks, ifindex })
    }

    /// Every frame `ifindex` receives, seen by an `ETH_P_ALL` tap (before TC
    /// ingress); frames the device sends itself are ignored
    /// (`PACKET_IGNORE_OUTGOING`). On the peer of a device this is what left
    /// the device after its TC egress.
    ///
    /// # Errors
    /// [`NetError::Packet`] when the socket fails.
    pub fn all(ifindex: u32) -> Result<Capture, NetError> {
        Ok(Capture { socks: vec![capture_socket(ifindex, ETH_P_ALL, true)?], ifindex })
    }

    /// Collect frames until none arrived for `timeout` (or [`DRAIN_LIMIT`]
    /// passed), in arrival order.
    ///
    /// # Errors
    /// [`NetError::Packet`] when reading fails, a frame is truncated, or the
    /// kernel dropped frames because the socket buffer overflowed.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<CapturedFrame>, NetError> {
        Ok(Capture::drain_together(&mut [self], timeout)?.pop().unwrap_or_default())
    }

    /// [`Capture::drain`] of several captures at once: frames are collected
    /// until none of them received one for `timeout`, so the quiet period
    /// is waited once, not once per capture. One list per capture, in the
    /// order given.
    ///
    /// # Errors
    /// As [`Capture::drain`], naming the capture's device.
    pub fn drain_together(captures: &mut [&mut Capture], timeout: Duration) -> Result<Vec<Vec<CapturedFrame>>, NetError> {
        let mut queues: Vec<Vec<Vec<CapturedFrame>>> = captures.iter().map(|c| vec![Vec::new(); c.socks.len()]).collect();
        let mut buf = vec![0u8; MAX_FRAME];
        let started = Instant::now();
        let mut quiet_since = started;
        loop {
            let mut got = false;
            for (capture, queues) in captures.iter().zip(queues.iter_mut()) {
                for (sock, queue) in capture.socks.iter().zip(queues.iter_mut()) {
                    while let Some(frame) = recv_frame(sock.as_raw_fd(), &mut buf, capture.ifindex)? {
                        queue.push(frame);
                        got = true;
                    }
                }
            }
            if got {
                quiet_since = Instant::now();
            }
            let left = timeout.saturating_sub(quiet_since.elapsed()).min(DRAIN_LIMIT.saturating_sub(started.elapsed()));
            if left.is_zero() {
                break;
            }
            wait_readable(captures, left)?;
        }
        for capture in captures.iter() {
            capture.check_drops()?;
        }
        Ok(queues.into_iter().map(merge_by_ts).collect())
    }

    fn check_drops(&self) -> Result<(), NetError> {
        for sock in &self.socks {
            let mut stats = TpacketStats::default();
            let mut len = size_of::<TpacketStats>() as libc::socklen_t;
            // SAFETY: `stats` is a valid tpacket_stats buffer of `len` bytes.
            let ret = unsafe {
                libc::getsockopt(sock.as_raw_fd(), libc::SOL_PACKET, PACKET_STATISTICS, (&mut stats as *mut TpacketStats).cast(), &mut len)
            };
            cvt(ret).map_err(packet_err("read capture statistics", self.ifindex))?;
            if stats.tp_drops > 0 {
                let e = io::Error::other(format!("{} frames dropped: socket buffer overflowed", stats.tp_drops));
                return Err(packet_err("capture", self.ifindex)(e));
            }
        }
        Ok(())
    }
}

/// Wait until a socket of any of `captures` is readable, or `left` passed.
fn wait_readable(captures: &[&mut Capture], left: Duration) -> Result<(), NetError> {
    let mut fds: Vec<libc::pollfd> = captures
        .iter()
        .flat_map(|c| c.socks.iter())
        .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
    match cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(packet_err("poll capture sockets", captures.first().map_or(0, |c| c.ifindex))(e)),
    }
}

fn capture_socket(ifindex: u32, protocol: u16, ignore_outgoing: bool) -> Result<OwnedFd, NetError> {
    let what = format!("open capture socket for ethertype {protocol:#06x}");
    let fd = packet_socket(libc::SOCK_NONBLOCK).map_err(packet_err(what.clone(), ifindex))?;
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    setsockopt(raw, libc::SOL_PACKET, PACKET_AUXDATA, &one).map_err(packet_err("enable PACKET_AUXDATA", ifindex))?;
    setsockopt(raw, libc::SOL_SOCKET, SO_TIMESTAMPNS, &one).map_err(packet_err("enable SO_TIMESTAMPNS", ifindex))?;
    if setsockopt(raw, libc::SOL_SOCKET, SO_RCVBUFFORCE, &RCVBUF_BYTES).is_err() {
        // Without CAP_NET_ADMIN only the capped SO_RCVBUF is allowed.
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF_BYTES).map_err(packet_err("set SO_RCVBUF", ifindex))?;
    }
    if ignore_outgoing {
        setsockopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)
            .map_err(packet_err("enable PACKET_IGNORE_OUTGOING (Linux 4.20+)", ifindex))?;
    }
    // Binding with the protocol is what registers the handler: nothing is
    // queued from other devices before this point.
    bind(raw, ifindex, protocol).map_err(packet_err(what.replace("open", "bind"), ifindex))?;
    Ok(fd)
}

/// Read one frame if one is queued (`Ok(None)` when the socket is empty).
fn recv_frame(fd: RawFd, buf: &mut [u8], ifindex: u32) -> Result<Option<CapturedFrame>, NetError> {
    // SAFETY: all-zero is valid for these plain-data structs.
    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
    let mut control = [0u64; 16]; // 128 bytes, 8-aligned: room for auxdata + timespec
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv_frame(fd, buf, ifindex),
            _ => Err(packet_err("receive frame", ifindex)(e)),
        };
    }
    let n = n as usize;
    if n > buf.len() {
        return Err(packet_err("receive frame", ifindex)(io::Error::other(format!("{n}-byte frame truncated to {}", buf.len()))));
    }
    let (aux, ts) = read_cmsgs(&msg);
    Ok(Some(CapturedFrame { data: restore_vlan(&buf[..n], aux), ts, pkt_type: from.sll_pkttype }))
}

fn read_cmsgs(msg: &libc::msghdr) -> (Option<TpacketAuxdata>, Duration) {
    let (mut aux, mut ts) = (None, Duration::ZERO);
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_PACKET, PACKET_AUXDATA) => aux = Some(std::ptr::read_unaligned(data.cast::<TpacketAuxdata>())),
                (libc::SOL_SOCKET, SO_TIMESTAMPNS) => {
                    let t = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    ts = Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32);
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (aux, ts)
}

/// Put back the VLAN tag the receive path moved into skb metadata.
fn restore_vlan(frame: &[u8], aux: Option<TpacketAuxdata>) -> Vec<u8> {
    let Some(aux) = aux.filter(|a| a.tp_status & TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12) else {
        return frame.to_vec();
    };
    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { ETH_P_8021Q };
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Merge per-socket queues by timestamp; each queue keeps its own order and
/// ties go to the lower socket index.
fn merge_by_ts(mut queues: Vec<Vec<CapturedFrame>>) -> Vec<CapturedFrame> {
    if queues.len() == 1 {
        return queues.pop().unwrap_or_default();
    }
    let total = queues.iter().map(Vec::len).sum();
    let mut heads = vec![0usize; queues.len()];
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let next = (0..queues.len())
            .filter(|&q| heads[q] < queues[q].len())
            .min_by_key(|&q| (queues[q][heads[q]].ts, q));
        let Some(q) = next else { break };
        out.push(queues[q][heads[q]].clone());
        heads[q] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ts: u64, tag: u8) -> CapturedFrame {
        CapturedFrame { data: vec![tag], ts: Duration::from_nanos(ts), pkt_type: 0 }
    }

    #[test]
    fn merge_keeps_each_queue_in_order_and_interleaves_by_time() {
        let merged = merge_by_ts(vec![vec![frame(1, 1), frame(5, 2), frame(5, 3)], vec![frame(2, 4), frame(5, 5)]]);
        let tags: Vec<u8> = merged.iter().map(|f| f.data[0]).collect();
        assert_eq!(tags, [1, 4, 2, 3, 5]);
    }

    #[test]
    fn vlan_tag_is_reinserted_after_the_source_mac() {
        let untagged: Vec<u8> = (0..12).chain([0x08, 0x00, 0xaa]).collect();
        let aux = TpacketAuxdata { tp_status: TP_STATUS_VLAN_VALID, tp_vlan_tci: 0x2064, ..Default::default() };
        let tagged = restore_vlan(&untagged, Some(aux));
        assert_eq!(&tagged[..12], &untagged[..12]);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x20, 0x64]);
        assert_eq!(&tagged[16..], &[0x08, 0x00, 0xaa]);
        let qinq = TpacketAuxdata { tp_status: TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, tp_vlan_tpid: 0x88a8, ..aux };
        assert_eq!(&restore_vlan(&untagged, Some(qinq))[12..14], &[0x88, 0xa8]);
        assert_eq!(restore_vlan(&untagged, Some(TpacketAuxdata::default())), untagged);
    }
}
