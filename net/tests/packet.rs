//! AF_PACKET injection and capture, and where the sockets sit relative to the
//! TC hooks on this kernel.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::LeftBehind;
use common::bpf::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, load_classifier};
use tclab_net::packet::{Capture, CapturedFrame, Injector, Sent};
use tclab_net::tc::{self, Direction};
use tclab_net::{NetNs, VethPair, create_veth_pair, require, set_sysctl, set_link_up};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const QUIET: Duration = Duration::from_millis(100);

struct Lab {
    a: NetNs,
    b: NetNs,
    pair: VethPair,
    guard: LeftBehind,
}

/// `a` is the device under test, `b` its peer.
fn lab(tag: &str) -> Lab {
    let (name_a, name_b) = (format!("t-{tag}-a"), format!("t-{tag}-b"));
    let guard = LeftBehind::start(&[&name_a, &name_b]);
    let a = NetNs::new(&name_a).unwrap();
    let b = NetNs::new(&name_b).unwrap();
    let pair = create_veth_pair(&a, &name_a, &b, &name_b, Some((MAC_A, MAC_B))).unwrap();
    Lab { a, b, pair, guard }
}

/// IPv4 captures and injectors on both sides of the pair.
struct Ends {
    /// What `a` lets through its TC ingress.
    after_ingress: Capture,
    /// What reaches `b` (what left `a`).
    at_peer: Capture,
    /// Sends from `b` (into `a`'s ingress).
    from_peer: Injector,
    /// Sends from `a` (through its TC egress).
    from_dev: Injector,
}

impl Lab {
    fn ends(&self) -> Ends {
        let (ia, ib) = (self.pair.a.ifindex, self.pair.b.ifindex);
        Ends {
            after_ingress: self.a.run(|| Capture::after_ingress(ia, &[0x0800])).unwrap(),
            at_peer: self.b.run(|| Capture::all(ib)).unwrap(),
            from_peer: self.b.run(|| Injector::open(ib)).unwrap(),
            from_dev: self.a.run(|| Injector::open(ia)).unwrap(),
        }
    }

    /// Drop the namespaces, then check nothing was left behind.
    fn finish(self) {
        let Lab { a, b, guard, .. } = self;
        drop((a, b));
        guard.check();
    }
}

/// An Ethernet frame b -> a with `ethertype` and a recognisable payload.
fn frame(ethertype: u16, seq: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..46u8).map(|i| i.wrapping_mul(7) ^ seq));
    f
}

fn datas(frames: &[CapturedFrame]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| f.data.clone()).collect()
}

/// Assert `got == want`, naming the first differing frame instead of
/// printing every byte.
#[track_caller]
fn assert_frames(got: &[CapturedFrame], want: &[Vec<u8>], what: &str) {
    let got = datas(got);
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        let hex = |f: Option<&Vec<u8>>| f.map(|f| f.iter().take(20).map(|b| format!("{b:02x}")).collect::<String>());
        panic!(
            "{what}: {} frames captured, {} expected; first difference at #{i}: got {:?}.. want {:?}..",
            got.len(),
            want.len(),
            hex(got.get(i)),
            hex(want.get(i))
        );
    }
}

#[test]
fn idle_pair_is_silent_but_an_ipv6_enabled_one_is_not() {
    if !require::root("idle_pair_is_silent_but_an_ipv6_enabled_one_is_not") {
        return;
    }
    let l = lab("idle");
    let mut on_a = l.a.run(|| Capture::all(l.pair.a.ifindex)).unwrap();
    let mut on_b = l.b.run(|| Capture::all(l.pair.b.ifindex)).unwrap();
    let seen_a = on_a.drain(Duration::from_millis(300)).unwrap();
    let seen_b = on_b.drain(Duration::from_millis(300)).unwrap();
    assert!(seen_a.is_empty() && seen_b.is_empty(), "idle traffic: {seen_a:?} {seen_b:?}");
    // Control: the same capture does see what an IPv6-enabled device sends
    // (DAD, MLD, router solicitations) once it gets a link-local address.
    set_sysctl(&l.a, "net.ipv6.conf.t-idle-a.addr_gen_mode", "0").unwrap();
    set_sysctl(&l.a, "net.ipv6.conf.t-idle-a.disable_ipv6", "0").unwrap();
    set_link_up(&l.a, "t-idle-a").unwrap();
    let noisy = on_b.drain(Duration::from_millis(1500)).unwrap();
    assert!(noisy.iter().any(|f| f.data[12..14] == [0x86, 0xdd]), "expected IPv6 frames, got {noisy:?}");
    l.finish();
}

#[test]
fn drain_together_waits_for_every_capture_and_keeps_their_frames_apart() {
    if !require::root("drain_together_waits_for_every_capture_and_keeps_their_frames_apart") {
        return;
    }
    let l = lab("both");
    let Ends { mut after_ingress, mut at_peer, from_peer, from_dev } = l.ends();
    let (to_a, to_b, late) = (frame(0x0800, 1), frame(0x0800, 2), frame(0x0800, 3));
    from_peer.send(&to_a).unwrap();
    from_dev.send(&to_b).unwrap();
    // A frame on the first capture while the drain is waiting is collected too.
    let sender = std::thread::spawn(move || {
        std::thread::sleep(QUIET / 2);
        from_peer.send(&late).unwrap();
        late
    });
    let mut lists = Capture::drain_together(&mut [&mut after_ingress, &mut at_peer], QUIET).unwrap().into_iter();
    let late = sender.join().unwrap();
    assert_frames(&lists.next().unwrap(), &[to_a, late], "after ingress");
    assert_frames(&lists.next().unwrap(), &[to_b], "at the peer");
    assert!(lists.next().is_none(), "one list per capture");
    l.finish();
}

#[test]
fn injected_frames_arrive_byte_identical_in_both_directions() {
    if !require::root("injected_frames_arrive_byte_identical_in_both_directions") {
        return;
    }
    let l = lab("inj");
    let Ends { mut after_ingress, mut at_peer, from_peer, from_dev } = l.ends();

    let f = frame(0x0800, 1);
    from_peer.send(&f).unwrap();
    let got = after_ingress.drain(QUIET).unwrap();
    assert_frames(&got, std::slice::from_ref(&f), "capture");
    assert_eq!(got[0].pkt_type, libc::PACKET_HOST);
    assert!(got[0].ts > Duration::from_secs(1_600_000_000), "kernel timestamp missing: {:?}", got[0].ts);
    assert!(at_peer.drain(QUIET).unwrap().is_empty(), "the peer ignores its own outgoing frames");

    let back = frame(0x0800, 2);
    from_dev.send(&back).unwrap();
    assert_frames(&at_peer.drain(QUIET).unwrap(), &[back], "capture");
    assert!(after_ingress.drain(QUIET).unwrap().is_empty(), "a frame a sends is not a's ingress");
    assert!(from_peer.send(&[0u8; 10]).is_err(), "runt frames are refused");
    l.finish();
}

#[test]
fn ethertype_sockets_run_after_tc_ingress_and_all_taps_before() {
    if !require::root("ethertype_sockets_run_after_tc_ingress_and_all_taps_before") {
        return;
    }
    let l = lab("ord");
    let ia = l.pair.a.ifindex;
    let mut after = l.a.run(|| Capture::after_ingress(ia, &[0x0800])).unwrap();
    let mut tap = l.a.run(|| Capture::all(ia)).unwrap();
    let inject = l.b.run(|| Injector::open(l.pair.b.ifindex)).unwrap();
    let drop_prog = load_classifier("t_drop", TC_ACT_SHOT);
    l.a.run(|| {
        tc::add_clsact(ia).unwrap();
        tc::attach_bpf(ia, Direction::Ingress, 1, 1, drop_prog.as_fd(), "t_drop").unwrap();
    });
    let f = frame(0x0800, 3);
    inject.send(&f).unwrap();
    assert_frames(&tap.drain(QUIET).unwrap(), std::slice::from_ref(&f), "ETH_P_ALL tap runs before TC ingress");
    assert!(after.drain(QUIET).unwrap().is_empty(), "ethertype socket must not see a frame TC ingress dropped");
    // Control: with the dropping filter gone the same frame gets through.
    l.a.run(|| tc::delete_filter(ia, Direction::Ingress, 1, 1)).unwrap();
    inject.send(&f).unwrap();
    assert_frames(&after.drain(QUIET).unwrap(), std::slice::from_ref(&f), "capture");
    assert_frames(&tap.drain(QUIET).unwrap(), &[f], "capture");
    l.finish();
}

#[test]
fn frames_sent_on_the_device_cross_its_tc_egress() {
    if !require::root("frames_sent_on_the_device_cross_its_tc_egress") {
        return;
    }
    let l = lab("egr");
    let ia = l.pair.a.ifindex;
    let mut at_peer = l.b.run(|| Capture::all(l.pair.b.ifindex)).unwrap();
    let send = l.a.run(|| Injector::open(ia)).unwrap();
    let drop_prog = load_classifier("t_drop", TC_ACT_SHOT);
    l.a.run(|| {
        tc::add_clsact(ia).unwrap();
        tc::attach_bpf(ia, Direction::Egress, 1, 1, drop_prog.as_fd(), "t_drop").unwrap();
    });
    let f = frame(0x0800, 4);
    assert_eq!(send.transmit(&f).unwrap(), Sent::DroppedOnEgress);
    send.send(&f).unwrap(); // a drop is not an error for `send`
    assert!(at_peer.drain(QUIET).unwrap().is_empty(), "TC egress drop must stop an injected frame");
    l.a.run(|| tc::delete_filter(ia, Direction::Egress, 1, 1)).unwrap();
    assert_eq!(send.transmit(&f).unwrap(), Sent::Transmitted);
    assert_frames(&at_peer.drain(QUIET).unwrap(), &[f], "capture");
    l.finish();
}

#[test]
fn same_priority_filters_run_in_dump_order() {
    if !require::root("same_priority_filters_run_in_dump_order") {
        return;
    }
    let l = lab("dump");
    let ia = l.pair.a.ifindex;
    let mut after = l.a.run(|| Capture::after_ingress(ia, &[0x0800])).unwrap();
    let inject = l.b.run(|| Injector::open(l.pair.b.ifindex)).unwrap();
    let drop_prog = load_classifier("t_drop", TC_ACT_SHOT);
    let pass_prog = load_classifier("t_pass", TC_ACT_OK);
    let dumped = l.a.run(|| {
        tc::add_clsact(ia).unwrap();
        tc::attach_bpf(ia, Direction::Ingress, 5, 1, drop_prog.as_fd(), "t_drop").unwrap();
        tc::attach_bpf(ia, Direction::Ingress, 5, 2, pass_prog.as_fd(), "t_pass").unwrap();
        tc::list_filters(ia, Direction::Ingress).unwrap()
    });
    let names: Vec<_> = dumped.iter().map(|f| f.bpf_name.clone().unwrap()).collect();
    let f = frame(0x0800, 5);
    inject.send(&f).unwrap();
    let passed = !after.drain(QUIET).unwrap().is_empty();
    // Whichever runs first decides (direct action ends classification).
    assert_eq!(passed, names[0] == "t_pass", "dump order {names:?} but frame passed={passed}");
    assert_eq!(names, ["t_pass", "t_drop"], "cls_bpf keeps the newest filter of a priority first");
    l.finish();
}

#[test]
fn mixed_ethertypes_keep_send_order_and_taps_restore_vlan_tags() {
    if !require::root("mixed_ethertypes_keep_send_order_and_taps_restore_vlan_tags") {
        return;
    }
    let l = lab("vlan");
    let ia = l.pair.a.ifindex;
    let types = [0x0800, 0x86dd, 0x0806];
    let mut after = l.a.run(|| Capture::after_ingress(ia, &types)).unwrap();
    let mut tap = l.a.run(|| Capture::all(ia)).unwrap();
    let inject = l.b.run(|| Injector::open(l.pair.b.ifindex)).unwrap();
    // A pass-through classifier on the path, as in a real chain.
    let unspec = load_classifier("t_unspec", TC_ACT_UNSPEC);
    l.a.run(|| {
        tc::add_clsact(ia).unwrap();
        tc::attach_bpf(ia, Direction::Ingress, 1, 1, unspec.as_fd(), "t_unspec").unwrap();
    });
    let (mut sent, mut untagged) = (Vec::new(), Vec::new());
    for seq in 0..60u8 {
        let f = frame(types[usize::from(seq) % 3], seq);
        untagged.push(f.clone());
        let mut on_wire = f;
        if seq % 4 == 0 {
            // 802.1Q, VID 100, PCP 1, in front of the ethertype.
            on_wire.splice(12..12, [0x81, 0x00, 0x20, 0x64]);
        }
        inject.send(&on_wire).unwrap();
        sent.push(on_wire);
    }
    assert_frames(&tap.drain(QUIET).unwrap(), &sent, "tap capture differs from what was sent");
    // With no VLAN device for VID 100 the kernel clears the tag (and marks
    // the frame PACKET_OTHERHOST) before ethertype handlers run: after
    // ingress the tag is gone for good.
    let got = after.drain(QUIET).unwrap();
    assert_frames(&got, &untagged, "after-ingress capture");
    for (i, f) in got.iter().enumerate() {
        let want = if i % 4 == 0 { libc::PACKET_OTHERHOST } else { libc::PACKET_HOST };
        assert_eq!(f.pkt_type, want, "pkt_type of frame #{i}");
    }
    l.finish();
}
