//! HTTP/1.1 recognition and W3C traceparent validation in the classifiers,
//! through BPF_PROG_TEST_RUN and the ring buffer.

mod common;

use common::*;
use tclab_datapath::types::{Counter, CtStatus, CtTuple, EventKind, HttpEvent, TraceparentStatus, ct_flags};

fn harness(test: &str) -> Option<Harness> {
    tclab_net::require::root(&format!("classifier_http::{test}")).then(Harness::default_config)
}

fn client() -> std::net::SocketAddr {
    sa("10.0.0.1:43000")
}
fn server() -> std::net::SocketAddr {
    sa("10.0.0.2:8080")
}

/// Send one request segment client → server and return its HTTP events.
fn send(h: &mut Harness, payload: &[u8]) -> Vec<HttpEvent> {
    h.egress(&tcp(client(), server(), TCP_ACK | TCP_PSH, payload));
    h.http_events()
}

/// The single HTTP event a request with `header` produces.
fn one_request(h: &mut Harness, header: &str) -> HttpEvent {
    let events = send(h, &request("GET", "/", &[header]));
    assert_eq!(events.len(), 1, "one event for {header:?}");
    assert_eq!(EventKind::from_raw(events[0].hdr.kind), Some(EventKind::HttpRequest));
    events[0]
}

fn status(e: &HttpEvent) -> TraceparentStatus {
    TraceparentStatus::from_raw(e.traceparent_status).expect("known status")
}

#[test]
fn every_method_is_a_request_and_lookalikes_are_not() {
    let Some(mut h) = harness("every_method_is_a_request_and_lookalikes_are_not") else { return };
    let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    for (i, m) in methods.into_iter().enumerate() {
        let req = request(m, "/tracemetoo", &[]);
        let events = send(&mut h, &req);
        assert_eq!(events.len(), 1, "{m}");
        let e = &events[0];
        assert_eq!(e.hdr.kind, EventKind::HttpRequest as u32, "{m}");
        assert_eq!(e.payload(), &req[..], "{m}: payload captured whole");
        assert_eq!(e.payload_len as usize, req.len());
        assert_eq!(status(e), TraceparentStatus::Missing);
        assert_eq!(e.hdr.tuple, CtTuple::new(client(), server(), 6));
        assert_eq!(e.hdr.dir, 1, "seen on egress");
        assert_eq!(e.hdr.ifindex, 1, "BPF_PROG_TEST_RUN runs on loopback");
        let want = if i == 0 { CtStatus::New } else { CtStatus::Established };
        assert_eq!(e.hdr.ct_status, want as u8, "{m}");
    }
    for not in ["get / HTTP/1.1\r\n\r\n", "GETS / HTTP/1.1\r\n\r\n", "FOO / HTTP/1.1\r\n\r\n", "GET", "\x16\x03\x01\x02\x00"] {
        assert!(send(&mut h, not.as_bytes()).is_empty(), "{not:?} is not a request");
    }
    assert_eq!(h.counter(Counter::HttpRequests), methods.len() as u64);
}

#[test]
fn status_lines_are_responses() {
    let Some(mut h) = harness("status_lines_are_responses") else { return };
    let ok = ["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.0 404 Not Found\r\n\r\n", "HTTP/1.1 204\r\n\r\n"];
    for r in ok {
        h.ingress(&tcp(server(), client(), TCP_ACK | TCP_PSH, r.as_bytes()));
        let events = h.http_events();
        assert_eq!(events.len(), 1, "{r:?}");
        assert_eq!(events[0].hdr.kind, EventKind::HttpResponse as u32);
        assert_eq!(events[0].payload(), r.as_bytes());
        assert_eq!(events[0].hdr.dir, 0, "seen on ingress");
    }
    for r in ["HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n", "HTTP/1.1 20x OK\r\n", "http/1.1 200 OK\r\n"] {
        h.ingress(&tcp(server(), client(), TCP_ACK | TCP_PSH, r.as_bytes()));
        assert!(h.http_events().is_empty(), "{r:?} is not a status line");
    }
    assert_eq!(h.counter(Counter::HttpResponses), 3);
}

/// The HTTP code runs in `tclab_http`, tail-called by both hooks, and
/// learns the hook from the per-CPU scratch value: alternating hooks on one
/// CPU must never report the previous packet's direction.
#[test]
fn the_tail_called_http_program_reports_each_hooks_direction() {
    let Some(mut h) = harness("the_tail_called_http_program_reports_each_hooks_direction") else { return };
    for round in 0..3 {
        let req = send(&mut h, &request("GET", "/", &[]));
        assert_eq!(req.len(), 1, "round {round}: one request event");
        assert_eq!((req[0].hdr.kind, req[0].hdr.dir), (EventKind::HttpRequest as u32, 1), "round {round}: request on egress");
        h.ingress(&tcp(server(), client(), TCP_ACK | TCP_PSH, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        let resp = h.http_events();
        assert_eq!(resp.len(), 1, "round {round}: one response event");
        assert_eq!((resp[0].hdr.kind, resp[0].hdr.dir), (EventKind::HttpResponse as u32, 0), "round {round}: response on ingress");
    }
    assert_eq!((h.counter(Counter::HttpRequests), h.counter(Counter::HttpResponses)), (3, 3));
}

#[test]
fn payload_capture_is_the_first_256_bytes() {
    let Some(mut h) = harness("payload_capture_is_the_first_256_bytes") else { return };
    let long_path = format!("/{}", "p".repeat(600));
    let req = request("POST", &long_path, &[]);
    let e = send(&mut h, &req)[0];
    assert_eq!(e.captured_len, 256);
    assert_eq!(e.payload(), &req[..256]);
    assert_eq!(e.payload_len as usize, req.len());
}

#[test]
fn w3c_rules() {
    let Some(mut h) = harness("w3c_rules") else { return };
    let tp_v1 = TP.replacen("00-", "cc-", 1);
    use TraceparentStatus::*;
    let cases: Vec<(String, TraceparentStatus)> = vec![
        (format!("traceparent: {TP}"), Valid),
        (format!("TraceParent: {TP}"), Valid),
        (format!("TRACEPARENT:{TP}"), Valid),
        (format!("traceparent: \t {TP} \t "), Valid),
        (format!("traceparent:\t{TP}"), Valid),
        (format!("traceparent: {}", TP.to_uppercase()), Invalid),
        (format!("traceparent: {}", TP.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32))), Invalid),
        (format!("traceparent: {}", TP.replace("00f067aa0ba902b7", &"0".repeat(16))), Invalid),
        (format!("traceparent: {}", TP.replacen("00-", "ff-", 1)), Invalid),
        (format!("traceparent: {}", &TP[..54]), Invalid),
        (format!("traceparent: {TP}0"), Invalid),
        (format!("traceparent: {TP}-00"), Invalid),
        (format!("traceparent: {tp_v1}"), Valid),
        (format!("traceparent: {tp_v1}-extra-fields"), Valid),
        (format!("traceparent: {tp_v1}x"), Invalid),
        (format!("traceparent: {}", TP.replace("-01", "-0G")), Invalid),
        (format!("traceparent: {}", TP.replacen('-', "_", 1)), Invalid),
        ("traceparent:".to_string(), Invalid),
        (format!("x-traceparent: {TP}"), Missing),
        (format!("traceparent : {TP}"), Missing),
        (format!("X-Other: traceparent: {TP}"), Missing),
        ("X-Nothing: here".to_string(), Missing),
    ];
    let (mut valid, mut invalid) = (0, 0);
    for (header, want) in &cases {
        let e = one_request(&mut h, header);
        assert_eq!(status(&e), *want, "{header:?}");
        match want {
            Valid => {
                valid += 1;
                let value = header.split_once(':').unwrap().1.trim_matches([' ', '\t']);
                assert_eq!(e.traceparent().unwrap(), &value.as_bytes()[..55], "{header:?}");
                assert_eq!(e.traceparent[55], 0);
            }
            _ => {
                invalid += u64::from(*want == Invalid);
                assert_eq!(e.traceparent, [0u8; 56], "{header:?}: an invalid value is never copied");
            }
        }
    }
    assert_eq!(h.counter(Counter::TraceparentValid), valid);
    assert_eq!(h.counter(Counter::TraceparentInvalid), invalid);
}

#[test]
fn traceparent_after_the_header_block_is_ignored() {
    let Some(mut h) = harness("traceparent_after_the_header_block_is_ignored") else { return };
    let mut req = request("POST", "/", &["Content-Length: 70"]);
    req.extend_from_slice(format!("traceparent: {TP}\r\n").as_bytes());
    let e = send(&mut h, &req)[0];
    assert_eq!(status(&e), TraceparentStatus::Missing);
}

#[test]
fn traceparent_deep_in_the_headers_is_found() {
    let Some(mut h) = harness("traceparent_deep_in_the_headers_is_found") else { return };
    let filler: Vec<String> = (0..12).map(|i| format!("X-Filler-{i:02}: {}", "f".repeat(28))).collect();
    let mut headers: Vec<&str> = filler.iter().map(String::as_str).collect();
    let tp = format!("traceparent: {TP}");
    headers.push(&tp);
    let req = request("GET", "/", &headers);
    let at = req.windows(12).position(|w| w == b"traceparent:").unwrap();
    assert!(at > 500, "header starts at byte {at}");
    let e = send(&mut h, &req)[0];
    assert_eq!(status(&e), TraceparentStatus::Valid);
}

#[test]
fn tracestate_is_copied() {
    let Some(mut h) = harness("tracestate_is_copied") else { return };
    let e = one_request(&mut h, "tracestate:  rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_eq!(e.tracestate(), b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_eq!(status(&e), TraceparentStatus::Missing);

    let long = format!("vendor={}", "x".repeat(200));
    let e = one_request(&mut h, &format!("TraceState: {long}"));
    assert_eq!(e.tracestate_len, 128);
    assert_eq!(e.tracestate(), &long.as_bytes()[..128]);

    let both = send(&mut h, &request("GET", "/", &[&format!("traceparent: {TP}"), "tracestate: a=b"]))[0];
    assert_eq!((status(&both), both.tracestate()), (TraceparentStatus::Valid, &b"a=b"[..]));
}

#[test]
fn pipelined_requests_report_the_first_traceparent() {
    let Some(mut h) = harness("pipelined_requests_report_the_first_traceparent") else { return };
    let other = TP.replace("00f067aa0ba902b7", "1111111111111111");
    let mut seg = request("GET", "/one", &[&format!("traceparent: {TP}")]);
    seg.extend(request("GET", "/two", &[&format!("traceparent: {other}")]));
    let events = send(&mut h, &seg);
    assert_eq!(events.len(), 1, "one event per segment");
    assert_eq!(events[0].traceparent().unwrap(), TP.as_bytes());

    // the documented limit: the second request's header is not read
    let mut seg = request("GET", "/one", &[]);
    seg.extend(request("GET", "/two", &[&format!("traceparent: {other}")]));
    assert_eq!(status(&send(&mut h, &seg)[0]), TraceparentStatus::Missing);
}

fn pending(h: &Harness) -> bool {
    h.ct(&CtTuple::new(client(), server(), 6)).expect("CT entry").has(ct_flags::HTTP_PENDING)
}

#[test]
fn split_headers_continue_in_the_next_segment() {
    let Some(mut h) = harness("split_headers_continue_in_the_next_segment") else { return };
    let first = send(&mut h, b"GET /split HTTP/1.1\r\nHost: svc\r\n");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].hdr.kind, EventKind::HttpRequest as u32);
    assert_eq!(status(&first[0]), TraceparentStatus::Missing);
    assert!(pending(&h), "header block not finished, no traceparent yet");

    let second = send(&mut h, format!("Accept: */*\r\ntraceparent: {TP}\r\n\r\n").as_bytes());
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].hdr.kind, EventKind::HttpContinuation as u32);
    assert_eq!(second[0].traceparent().unwrap(), TP.as_bytes());
    assert!(!pending(&h));

    // the body that follows is not scanned any more
    assert!(send(&mut h, b"traceparent: not-a-header").is_empty());
}

#[test]
fn split_inside_the_request_line() {
    let Some(mut h) = harness("split_inside_the_request_line") else { return };
    let first = send(&mut h, b"GET /a/very/long/pa");
    assert_eq!((first.len(), status(&first[0])), (1, TraceparentStatus::Missing));
    assert!(pending(&h));
    let second = send(&mut h, format!("th HTTP/1.1\r\nHost: svc\r\ntraceparent: {TP}\r\n\r\n").as_bytes());
    assert_eq!(second[0].hdr.kind, EventKind::HttpContinuation as u32);
    assert_eq!(status(&second[0]), TraceparentStatus::Valid);
    assert!(!pending(&h));
}

#[test]
fn split_ending_without_traceparent_clears_pending() {
    let Some(mut h) = harness("split_ending_without_traceparent_clears_pending") else { return };
    send(&mut h, b"GET / HTTP/1.1\r\nHost: svc\r\n");
    assert!(pending(&h));
    // the blank line that ends the headers arrives alone
    let second = send(&mut h, b"\r\n");
    assert_eq!(second.len(), 1);
    assert_eq!(status(&second[0]), TraceparentStatus::Missing);
    assert!(!pending(&h));
    assert!(send(&mut h, b"body bytes").is_empty());
}

#[test]
fn a_complete_request_does_not_set_pending() {
    let Some(mut h) = harness("a_complete_request_does_not_set_pending") else { return };
    send(&mut h, &request("GET", "/", &[]));
    assert!(!pending(&h));
    // an invalid traceparent in an unfinished header block also ends the search
    send(&mut h, b"GET / HTTP/1.1\r\ntraceparent: 00-bad\r\n");
    assert!(!pending(&h));
}

#[test]
fn http_over_ipv6_with_extension_headers_and_over_vlan() {
    let Some(mut h) = harness("http_over_ipv6_with_extension_headers_and_over_vlan") else { return };
    let req = request("GET", "/v6", &[&format!("traceparent: {TP}")]);
    let (c6, s6) = (sa("[fd00::1]:43000"), sa("[fd00::2]:8080"));
    let v6 = with_ipv6_ext(&tcp(c6, s6, TCP_ACK | TCP_PSH, &req), &[(0, vec![1, 4, 0, 0, 0, 0]), (60, vec![])]);
    h.egress(&v6);
    let tagged = tcp_vlan(client(), server(), TCP_ACK | TCP_PSH, &req, Some(100));
    h.egress(&tagged);
    let events = h.http_events();
    assert_eq!(events.len(), 2);
    for (e, tuple) in events.iter().zip([CtTuple::new(c6, s6, 6), CtTuple::new(client(), server(), 6)]) {
        assert_eq!(e.hdr.tuple, tuple);
        assert_eq!(e.payload(), &req[..], "payload found after the headers");
        assert_eq!(e.traceparent().unwrap(), TP.as_bytes());
    }
}

#[test]
fn a_full_ring_buffer_is_counted_as_lost_events() {
    if !tclab_net::require::root("classifier_http::a_full_ring_buffer_is_counted_as_lost_events") {
        return;
    }
    // the smallest ring: 4 KiB holds a dozen of these records
    let cfg = tclab_datapath::loader::DatapathConfig { ct_max_entries: 4096, events_ring_bytes: 4096, ..Default::default() };
    let mut h = Harness::new(cfg);
    let req = request("GET", "/flood", &[]);
    const SENT: u64 = 800;
    for _ in 0..SENT {
        h.egress(&tcp(client(), server(), TCP_ACK | TCP_PSH, &req));
    }
    let received = h.events().len() as u64;
    let lost = h.counter(Counter::EventsLost);
    assert!(lost > 0, "the ring buffer overflowed");
    assert_eq!(received + lost, SENT + 1, "every event is received or counted lost (+1 EV_CONN_OPEN)");
    // the ring drains and events flow again
    send(&mut h, &req);
    assert_eq!(h.counter(Counter::EventsLost), lost);
}

/// The documented limit: the first 64 header lines of a segment are
/// looked at; a traceparent on line 64 is found, one on line 65 is not.
#[test]
fn sixty_four_header_lines_are_scanned() {
    let Some(mut h) = harness("sixty_four_header_lines_are_scanned") else { return };
    for (fillers, want) in [(62, TraceparentStatus::Valid), (63, TraceparentStatus::Valid), (64, TraceparentStatus::Missing)] {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..fillers {
            req.extend_from_slice(b"A:1\r\n");
        }
        req.extend_from_slice(format!("traceparent: {TP}\r\n\r\n").as_bytes());
        let events = send(&mut h, &req);
        assert_eq!(events.len(), 1);
        assert_eq!(status(&events[0]), want, "traceparent on header line {}", fillers + 1);
    }
}

/// How long a poll(2) on the ring, started before `act` runs, sleeps.
fn poll_sleep(fd: std::os::fd::RawFd, timeout_ms: i32, act: impl FnOnce()) -> std::time::Duration {
    let waiter = std::thread::spawn(move || {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let start = std::time::Instant::now();
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        start.elapsed()
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    act();
    waiter.join().expect("poll thread")
}

/// A record wakes a sleeping reader only once `events_ring_bytes / 16`
/// bytes wait unread: a lone event leaves it asleep (no self-IPI per event;
/// `EventReader::poll` picks it up within its slice), a backlog wakes it.
#[test]
fn events_wake_the_reader_only_past_the_threshold() {
    if !tclab_net::require::root("classifier_http::events_wake_the_reader_only_past_the_threshold") {
        return;
    }
    let ring = 64 * 1024;
    let cfg = tclab_datapath::loader::DatapathConfig { ct_max_entries: 4096, events_ring_bytes: ring, ..Default::default() };
    let mut h = Harness::new(cfg);
    let req = request("GET", "/wake", &[]);
    h.egress(&tcp(client(), server(), TCP_ACK | TCP_PSH, &req));
    h.events();
    let fd = h.events_fd();

    // one event: the reader sleeps its whole timeout
    let slept = poll_sleep(fd, 1500, || h.egress(&tcp(client(), server(), TCP_ACK | TCP_PSH, &req)));
    assert!(slept >= std::time::Duration::from_millis(1400), "one event woke the reader after {slept:?}");
    assert_eq!(h.http_events().len(), 1, "the event is in the ring all the same");

    // a backlog past the threshold wakes it at once
    let per_event = std::mem::offset_of!(HttpEvent, payload) + req.len() + 8;
    let burst = tclab_datapath::loader::events_wakeup_bytes(ring) as usize / per_event + 2;
    let slept = poll_sleep(fd, 5000, || {
        for _ in 0..burst {
            h.egress(&tcp(client(), server(), TCP_ACK | TCP_PSH, &req));
        }
    });
    assert!(slept < std::time::Duration::from_millis(3000), "{burst} events did not wake the reader ({slept:?})");
    assert_eq!(h.http_events().len(), burst);
}

#[test]
fn a_ring_size_that_is_not_a_power_of_two_is_refused() {
    for bytes in [0, 1000, 3 * 4096] {
        let cfg = tclab_datapath::loader::DatapathConfig { events_ring_bytes: bytes, ..Default::default() };
        let err = match tclab_datapath::loader::Datapath::load(&cfg) {
            Ok(_) => panic!("a {bytes}-byte ring was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("events_ring_bytes must be a power of two"), "{bytes}: {err}");
    }
}
