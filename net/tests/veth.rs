//! veth pairs across namespaces, addresses, neighbours, sysctls.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::LeftBehind;
use tclab_net::{NetError, NetNs, add_address, add_neighbour, create_veth_pair, link_by_name, list_links, require, set_sysctl};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn read_inside(ns: &NetNs, path: &str) -> String {
    ns.run(|| std::fs::read_to_string(path).unwrap()).trim().to_owned()
}

#[test]
fn veth_pair_spans_two_namespaces_with_fixed_macs() {
    if !require::root("veth_pair_spans_two_namespaces_with_fixed_macs") {
        return;
    }
    let guard = LeftBehind::start(&["t-vp-a", "t-vp-b"]);
    let a = NetNs::new("t-vp-a").unwrap();
    let b = NetNs::new("t-vp-b").unwrap();
    let pair = create_veth_pair(&a, "t-vp-a", &b, "t-vp-b", Some((MAC_A, MAC_B))).unwrap();
    assert_eq!((pair.a.name.as_str(), pair.a.mac, pair.a.up), ("t-vp-a", MAC_A, true));
    assert_eq!((pair.b.name.as_str(), pair.b.mac, pair.b.up), ("t-vp-b", MAC_B, true));
    // Each end exists only in its own namespace.
    let names = |ns: &NetNs| list_links(ns).unwrap().into_iter().map(|l| l.name).collect::<Vec<_>>();
    assert_eq!(names(&a), ["lo", "t-vp-a"]);
    assert_eq!(names(&b), ["lo", "t-vp-b"]);
    assert_eq!(link_by_name(&a, "t-vp-a").unwrap(), pair.a);
    // The ifindex is the one the namespace itself reports.
    let idx = a.run(|| nix::net::if_::if_nametoindex("t-vp-a").unwrap());
    assert_eq!(idx, pair.a.ifindex);
    match link_by_name(&a, "t-vp-b") {
        Err(NetError::NoSuchDevice { ifname, ns, .. }) => assert_eq!((ifname.as_str(), ns.as_str()), ("t-vp-b", "t-vp-a")),
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
    drop((a, b));
    guard.check();
}

#[test]
fn veth_ipv6_disabled_in_its_own_namespace() {
    if !require::root("veth_ipv6_disabled_in_its_own_namespace") {
        return;
    }
    let guard = LeftBehind::start(&["t-v6-a", "t-v6-b"]);
    let a = NetNs::new("t-v6-a").unwrap();
    let b = NetNs::new("t-v6-b").unwrap();
    create_veth_pair(&a, "t-v6-a", &b, "t-v6-b", None).unwrap();
    // These files exist only inside the namespaces: reading them proves the
    // /proc/sys writes went to the right namespace.
    assert_eq!(read_inside(&a, "/proc/sys/net/ipv6/conf/t-v6-a/disable_ipv6"), "1");
    assert_eq!(read_inside(&b, "/proc/sys/net/ipv6/conf/t-v6-b/disable_ipv6"), "1");
    assert_eq!(read_inside(&b, "/proc/sys/net/ipv6/conf/t-v6-b/addr_gen_mode"), "1");
    assert!(!std::path::Path::new("/proc/sys/net/ipv6/conf/t-v6-a").exists(), "host sees the ns-only device");
    set_sysctl(&a, "net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(read_inside(&a, "/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(read_inside(&b, "/proc/sys/net/ipv4/ip_forward"), "0", "sysctl leaked into another namespace");
    let err = set_sysctl(&a, "net.ipv4.conf.nosuchdev.forwarding", "1").unwrap_err();
    assert!(err.to_string().contains("/proc/sys/net/ipv4/conf/nosuchdev/forwarding"), "{err}");
    assert!(matches!(set_sysctl(&a, "net/../../etc/x", "1"), Err(NetError::Invalid { .. })));
    guard.check();
}

#[test]
fn duplicate_veth_name_is_a_named_error() {
    if !require::root("duplicate_veth_name_is_a_named_error") {
        return;
    }
    let guard = LeftBehind::start(&["t-dup", "t-dup-p", "t-dup-q"]);
    let a = NetNs::new("t-dup-a").unwrap();
    let b = NetNs::new("t-dup-b").unwrap();
    create_veth_pair(&a, "t-dup", &b, "t-dup-p", None).unwrap();
    let err = create_veth_pair(&a, "t-dup", &b, "t-dup-q", None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(&err, NetError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST)), "{text}");
    assert!(text.contains("create veth") && text.contains("t-dup in ns t-dup-a"), "{text}");
    assert!(matches!(create_veth_pair(&a, "way-too-long-name0", &b, "x", None), Err(NetError::Invalid { .. })));
    guard.check();
}

#[test]
fn udp_crosses_the_pair_with_addresses_and_static_neighbours() {
    if !require::root("udp_crosses_the_pair_with_addresses_and_static_neighbours") {
        return;
    }
    let guard = LeftBehind::start(&["t-udp-a", "t-udp-b"]);
    let a = NetNs::new("t-udp-a").unwrap();
    let b = NetNs::new("t-udp-b").unwrap();
    create_veth_pair(&a, "t-udp-a", &b, "t-udp-b", Some((MAC_A, MAC_B))).unwrap();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));
    add_address(&a, "t-udp-a", ip_a.into(), 24).unwrap();
    add_address(&b, "t-udp-b", ip_b.into(), 24).unwrap();
    add_neighbour(&a, "t-udp-a", ip_b.into(), MAC_B).unwrap();
    add_neighbour(&b, "t-udp-b", ip_a.into(), MAC_A).unwrap();
    let err = add_address(&a, "t-udp-a", ip_a.into(), 24).unwrap_err();
    assert!(err.to_string().contains("10.99.0.1/24 on t-udp-a in ns t-udp-a"), "{err}");
    // Binding to an address only works if it is local to the namespace.
    let rx = b.run(|| UdpSocket::bind(SocketAddr::new(ip_b.into(), 4242)).unwrap());
    assert!(a.run(|| UdpSocket::bind(SocketAddr::new(ip_b.into(), 0))).is_err(), "ip_b must not be local to a");
    // Until the kernel's link watcher has activated the new link's qdisc
    // (deferred, later under load), what the stack sends is dropped: resend.
    rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let tx = a.run(|| UdpSocket::bind(SocketAddr::new(ip_a.into(), 0)).unwrap());
    let mut buf = [0u8; 64];
    let (n, from) = (0..50)
        .find_map(|_| {
            tx.send_to(b"hello across", SocketAddr::new(IpAddr::V4(ip_b), 4242)).unwrap();
            rx.recv_from(&mut buf).ok()
        })
        .expect("a datagram crosses the pair within 10 s");
    assert_eq!(&buf[..n], b"hello across");
    assert_eq!(from.ip(), IpAddr::V4(ip_a));
    guard.check();
}

#[test]
fn ipv6_address_reenables_ipv6_without_a_link_local_address() {
    if !require::root("ipv6_address_reenables_ipv6_without_a_link_local_address") {
        return;
    }
    let guard = LeftBehind::start(&["t-a6-a", "t-a6-b"]);
    let a = NetNs::new("t-a6-a").unwrap();
    let b = NetNs::new("t-a6-b").unwrap();
    create_veth_pair(&a, "t-a6-a", &b, "t-a6-b", None).unwrap();
    let ip: std::net::Ipv6Addr = "fd00:99::1".parse().unwrap();
    add_address(&a, "t-a6-a", ip.into(), 64).unwrap();
    assert_eq!(read_inside(&a, "/proc/sys/net/ipv6/conf/t-a6-a/disable_ipv6"), "0");
    // NODAD: usable at once, no tentative period.
    a.run(|| UdpSocket::bind(SocketAddr::new(ip.into(), 0))).unwrap();
    // addr_gen_mode=1: the only IPv6 address on the device is ours.
    let addrs = read_inside(&a, "/proc/thread-self/net/if_inet6");
    let ours: Vec<_> = addrs.lines().filter(|l| l.ends_with("t-a6-a")).collect();
    assert_eq!(ours.len(), 1, "{addrs}");
    assert!(ours[0].starts_with("fd000099000000000000000000000001"), "{addrs}");
    assert!(matches!(add_address(&a, "t-a6-a", ip.into(), 129), Err(NetError::Invalid { .. })));
    guard.check();
}
