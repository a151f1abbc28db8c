//! Deterministic fixture captures (`tclab fixtures`, `fixtures/*.pcap`).
//!
//! Every capture is built with etherparse from fixed addresses, ports,
//! sequence numbers and timestamps, so regenerating gives byte-identical
//! files (a test compares them with the committed ones). Addresses: client
//! 10.0.0.1 / fd00::1 (MAC 02:00:00:00:00:01), server 10.0.0.2 / fd00::2
//! (MAC 02:00:00:00:00:02), the scenario topology's defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, PacketBuilderStep,
    TcpOptionElement, VlanId,
};

use crate::pcap::Packet;

mod catalog;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("failed to create fixture folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write fixture: {0}")]
    Write(#[from] crate::pcap::PcapError),
    #[error("failed to build a packet of fixture {name}: {detail}")]
    Build { name: &'static str, detail: String },
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_V4: [u8; 4] = [10, 0, 0, 1];
pub const SERVER_V4: [u8; 4] = [10, 0, 0, 2];
pub const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// 2025-01-01T00:00:00Z: the first packet of every generated capture.
const EPOCH: Duration = Duration::from_secs(1_735_689_600);
/// Gap between consecutive packets.
const STEP: Duration = Duration::from_millis(1);

pub const TP_VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// One generated capture: file name, what it holds.
pub struct Fixture {
    pub file: &'static str,
    pub about: &'static str,
    build: fn() -> Result<Vec<Packet>, String>,
}

/// Every generated fixture. `fixtures/README.md` lists each one.
pub fn all() -> Vec<Fixture> {
    catalog::list()
}

/// Writes every generated fixture into `dir`; returns the paths written.
pub fn generate_all(dir: &Path) -> Result<Vec<PathBuf>, FixtureError> {
    std::fs::create_dir_all(dir).map_err(|source| FixtureError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for f in all() {
        let packets = (f.build)().map_err(|detail| FixtureError::Build {
            name: f.file,
            detail,
        })?;
        let path = dir.join(f.file);
        crate::pcap::write_file(&path, &packets)?;
        written.push(path);
    }
    Ok(written)
}

impl Fixture {
    pub(crate) const fn new(
        file: &'static str,
        about: &'static str,
        build: fn() -> Result<Vec<Packet>, String>,
    ) -> Self {
        Fixture { file, about, build }
    }

    /// The packets this fixture holds.
    pub fn packets(&self) -> Result<Vec<Packet>, String> {
        (self.build)()
    }
}

/// Frames with deterministic timestamps.
#[derive(Default)]
pub(crate) struct Capture {
    packets: Vec<Packet>,
}

impl Capture {
    pub fn push(&mut self, data: Vec<u8>) {
        let n = self.packets.len();
        let ts = EPOCH + STEP * u32::try_from(n).unwrap_or(u32::MAX);
        let orig_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.packets.push(Packet {
            index: n + 1,
            ts,
            data,
            orig_len,
            truncated: false,
        });
    }

    pub fn extend(&mut self, frames: Vec<Vec<u8>>) {
        frames.into_iter().for_each(|f| self.push(f));
    }

    pub fn finish(self) -> Vec<Packet> {
        self.packets
    }
}

/// A TCP connection between the client and the server, tracking seq/ack.
pub(crate) struct Tcp {
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    vlan: Option<u16>,
    /// Next sequence number each side sends.
    c_seq: u32,
    s_seq: u32,
    pub frames: Vec<Vec<u8>>,
}

const WINDOW: u16 = 64240;

impl Tcp {
    pub fn v4(client_port: u16, server_port: u16) -> Tcp {
        Tcp::new(
            (IpAddr::from(CLIENT_V4), client_port),
            (IpAddr::from(SERVER_V4), server_port),
        )
    }

    pub fn v6(client_port: u16, server_port: u16) -> Tcp {
        Tcp::new(
            (IpAddr::from(CLIENT_V6), client_port),
            (IpAddr::from(SERVER_V6), server_port),
        )
    }

    fn new(client: (IpAddr, u16), server: (IpAddr, u16)) -> Tcp {
        // Initial sequence numbers derived from the ports: fixed, yet distinct per connection.
        let c_seq = 1_000_000u32.wrapping_mul(u32::from(client.1));
        let s_seq = 3_000_000u32
            .wrapping_mul(u32::from(client.1))
            .wrapping_add(7);
        Tcp {
            client,
            server,
            vlan: None,
            c_seq,
            s_seq,
            frames: Vec::new(),
        }
    }

    pub fn with_vlan(mut self, id: u16) -> Tcp {
        self.vlan = Some(id);
        self
    }

    fn step(&self, from_client: bool) -> Result<PacketBuilderStep<IpHeaders>, String> {
        let (src, dst) = if from_client {
            (self.client.0, self.server.0)
        } else {
            (self.server.0, self.client.0)
        };
        let (smac, dmac) = if from_client {
            (CLIENT_MAC, SERVER_MAC)
        } else {
            (SERVER_MAC, CLIENT_MAC)
        };
        l3(smac, dmac, self.vlan, src, dst, IpNumber::TCP)
    }

    /// One segment; `flags` is a subset of "SAFRP" (SYN ACK FIN RST PSH).
    fn segment(&mut self, from_client: bool, flags: &str, payload: &[u8]) -> Result<(), String> {
        let (sport, dport) = if from_client {
            (self.client.1, self.server.1)
        } else {
            (self.server.1, self.client.1)
        };
        let (seq, ack) = if from_client {
            (self.c_seq, self.s_seq)
        } else {
            (self.s_seq, self.c_seq)
        };
        let mut b = self.step(from_client)?.tcp(sport, dport, seq, WINDOW);
        if flags.contains('S') {
            b = b
                .syn()
                .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
                .map_err(|e| e.to_string())?;
        }
        if flags.contains('A') {
            b = b.ack(ack);
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if flags.contains('R') {
            b = b.rst();
        }
        if flags.contains('P') {
            b = b.psh();
        }
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).map_err(|e| e.to_string())?;
        self.frames.push(out);
        // SYN and FIN each take one sequence number.
        let used = u32::try_from(payload.len()).unwrap_or(0)
            + u32::from(flags.contains('S') || flags.contains('F'));
        let seq = if from_client {
            &mut self.c_seq
        } else {
            &mut self.s_seq
        };
        *seq = seq.wrapping_add(used);
        Ok(())
    }

    pub fn handshake(&mut self) -> Result<(), String> {
        self.segment(true, "S", &[])?;
        self.segment(false, "SA", &[])?;
        self.segment(true, "A", &[])
    }

    /// The client sends `data` in one segment; the server acknowledges it.
    pub fn client_send(&mut self, data: &[u8]) -> Result<(), String> {
        self.segment(true, "AP", data)?;
        self.segment(false, "A", &[])
    }

    /// The client sends `data` without waiting for an ACK (pipelining, split requests).
    pub fn client_push(&mut self, data: &[u8]) -> Result<(), String> {
        self.segment(true, "AP", data)
    }

    pub fn server_send(&mut self, data: &[u8]) -> Result<(), String> {
        self.segment(false, "AP", data)?;
        self.segment(true, "A", &[])
    }

    pub fn server_push(&mut self, data: &[u8]) -> Result<(), String> {
        self.segment(false, "AP", data)
    }

    /// Client FIN, server FIN+ACK, client ACK.
    pub fn close(&mut self) -> Result<(), String> {
        self.segment(true, "FA", &[])?;
        self.segment(false, "FA", &[])?;
        self.segment(true, "A", &[])
    }

    pub fn server_reset(&mut self) -> Result<(), String> {
        self.segment(false, "RA", &[])
    }

    /// A SYN to a closed port: RST+ACK back (acknowledging the SYN).
    pub fn refused(&mut self) -> Result<(), String> {
        self.segment(true, "S", &[])?;
        self.s_seq = 0;
        self.segment(false, "RA", &[])
    }
}

/// Ethernet (+ optional VLAN) and an IP header with no fragmentation and TTL 64.
pub(crate) fn l3(
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    proto: IpNumber,
) -> Result<PacketBuilderStep<IpHeaders>, String> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h =
                Ipv4Header::new(0, 64, proto, s.octets(), d.octets()).map_err(|e| e.to_string())?;
            h.dont_fragment = true;
            IpHeaders::Ipv4(h, Default::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
                next_header: proto,
                ..Default::default()
            },
            Default::default(),
        ),
        _ => return Err("mixed IP versions".to_string()),
    };
    let eth = PacketBuilder::ethernet2(smac, dmac);
    Ok(match vlan {
        Some(id) => eth
            .single_vlan(VlanId::try_new(id).map_err(|e| e.to_string())?)
            .ip(ip),
        None => eth.ip(ip),
    })
}

/// A GET request with optional extra header lines (each without CRLF).
pub(crate) fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: 10.0.0.2\r\nUser-Agent: tclab-fixtures/1\r\nAccept: */*\r\n"
    );
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A response with a small text body.
pub(crate) fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
