//! Shared helpers of the classifier tests: BPF_PROG_TEST_RUN of the
//! datapath, ring buffer decoding; frames come from `tclab_datapath::frames`.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use aya::maps::{MapData, RingBuf};
use aya::TestRun;
use aya::programs::TestRunOptions;
use tclab_datapath::loader::{Datapath, DatapathConfig, Hook, MAP_EVENTS};
use tclab_datapath::types::{ConnEvent, Counter, Counters, CtEntry, CtTuple, EventKind, HttpEvent, read_struct};

// The frame builders live in the library (shared with `tclab bench`).
pub use tclab_datapath::frames::*;

pub const TC_ACT_UNSPEC: u32 = u32::MAX; // -1 as the kernel returns it

/// A decoded ring buffer event.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "test helper: events are few and short-lived")]
pub enum Event {
    Http(HttpEvent),
    Conn(ConnEvent),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        let raw = match self {
            Event::Http(h) => h.hdr.kind,
            Event::Conn(c) => c.hdr.kind,
        };
        EventKind::from_raw(raw).unwrap_or_else(|| panic!("unknown event kind {raw}"))
    }
    pub fn http(&self) -> &HttpEvent {
        match self {
            Event::Http(h) => h,
            Event::Conn(c) => panic!("expected an HTTP event, got {c:?}"),
        }
    }
    pub fn conn(&self) -> &ConnEvent {
        match self {
            Event::Conn(c) => c,
            Event::Http(h) => panic!("expected a connection event, got {:?}", h.hdr),
        }
    }
}

pub fn decode(bytes: &[u8]) -> Event {
    let kind = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
    let kind = EventKind::from_raw(kind).unwrap_or_else(|| panic!("unknown event kind {kind}"));
    if kind.is_http() {
        // The fixed part and exactly the captured payload bytes are sent.
        let fixed = std::mem::offset_of!(HttpEvent, payload);
        let at = std::mem::offset_of!(HttpEvent, captured_len);
        let captured = usize::from(u16::from_ne_bytes(bytes[at..at + 2].try_into().unwrap()));
        assert_eq!(bytes.len(), fixed + captured, "HTTP record = fixed part + captured_len bytes");
        let mut full = bytes.to_vec();
        full.resize(std::mem::size_of::<HttpEvent>(), 0);
        Event::Http(read_struct(&full).unwrap())
    } else {
        assert_eq!(bytes.len(), std::mem::size_of::<ConnEvent>(), "connection event size");
        Event::Conn(read_struct(bytes).unwrap())
    }
}

/// A loaded datapath and its ring buffer, run through BPF_PROG_TEST_RUN.
pub struct Harness {
    pub dp: Datapath,
    events: RingBuf<MapData>,
}

impl Harness {
    pub fn new(cfg: DatapathConfig) -> Harness {
        let mut dp = Datapath::load(&cfg).unwrap_or_else(|e| panic!("load datapath {cfg:?}: {e}"));
        let map = dp.ebpf_mut().take_map(MAP_EVENTS).expect("events map");
        let events = RingBuf::try_from(map).expect("events map is a ring buffer");
        Harness { dp, events }
    }

    pub fn default_config() -> Harness {
        Harness::new(DatapathConfig { ct_max_entries: 4096, ..Default::default() })
    }

    /// Run the frame through a hook: the verdict must be TC_ACT_UNSPEC and
    /// the packet must come out unchanged.
    pub fn run(&mut self, hook: Hook, frame: &[u8]) {
        let mut out = vec![0u8; frame.len() + 256];
        let res = self
            .dp
            .program_mut(hook)
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {hook:?} ({} bytes): {e:?}", frame.len()));
        assert_eq!(res.return_value, TC_ACT_UNSPEC, "verdict on {hook:?} must be TC_ACT_UNSPEC");
        assert_eq!(res.data_size_out as usize, frame.len(), "packet length changed");
        assert_eq!(&out[..frame.len()], frame, "packet bytes changed");
    }

    pub fn egress(&mut self, frame: &[u8]) {
        self.run(Hook::Egress, frame)
    }

    pub fn ingress(&mut self, frame: &[u8]) {
        self.run(Hook::Ingress, frame)
    }

    /// Every event currently in the ring buffer.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(decode(&item));
        }
        out
    }

    /// The ring buffer's fd, to wait on it with poll(2).
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.as_raw_fd()
    }

    /// The HTTP events currently in the ring buffer (connection events dropped).
    pub fn http_events(&mut self) -> Vec<HttpEvent> {
        self.events().into_iter().filter_map(|e| if let Event::Http(h) = e { Some(h) } else { None }).collect()
    }

    pub fn counters(&self) -> Counters {
        self.dp.counters().expect("read counters")
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters().get(c)
    }

    pub fn ct(&self, tuple: &CtTuple) -> Option<CtEntry> {
        self.dp.ct_entries().expect("read CT").into_iter().find(|(t, _)| t == tuple).map(|(_, e)| e)
    }

    pub fn ct_len(&self) -> usize {
        self.dp.ct_entries().expect("read CT").len()
    }
}
