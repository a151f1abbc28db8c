//! The one place that talks rtnetlink: a synchronous request/answer helper on
//! a fresh `NETLINK_ROUTE` socket. It must be called on a thread inside the
//! target namespace (see [`crate::NetNs::run`]): the socket's namespace is the
//! calling thread's.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::NetError;

/// NLMSG_ERROR flag: extended-ack TLVs follow the (capped) request header.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attribute carrying the kernel's error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// What the request is, for error messages ("create veth", "veth0 in ns a").
pub(crate) struct Op<'a> {
    pub what: &'a str,
    pub object: &'a str,
}

impl Op<'_> {
    fn err(&self, source: io::Error, ext_ack: Option<String>) -> NetError {
        NetError::Netlink { op: self.what.to_owned(), object: self.object.to_owned(), source, ext_ack }
    }
    fn decode(&self, reason: impl Into<String>) -> NetError {
        NetError::Decode { op: self.what.to_owned(), object: self.object.to_owned(), reason: reason.into() }
    }
}

fn open(op: &Op<'_>) -> Result<Socket, NetError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| op.err(e, None))?;
    sock.bind_auto().map_err(|e| op.err(e, None))?;
    // Ask for the kernel's error strings, without the echoed request body.
    sock.set_ext_ack(true).map_err(|e| op.err(e, None))?;
    sock.set_cap_ack(true).map_err(|e| op.err(e, None))?;
    Ok(sock)
}

/// Send a request that expects only an ACK (NEW*/DEL*/SET*).
pub(crate) fn execute(msg: RouteNetlinkMessage, flags: u16, op: &Op<'_>) -> Result<(), NetError> {
    exchange(msg, flags | NLM_F_ACK, op).map(|_| ())
}

/// Send a dump request and collect every answer until NLMSG_DONE.
pub(crate) fn dump(msg: RouteNetlinkMessage, op: &Op<'_>) -> Result<Vec<RouteNetlinkMessage>, NetError> {
    exchange(msg, NLM_F_DUMP, op)
}

fn exchange(msg: RouteNetlinkMessage, flags: u16, op: &Op<'_>) -> Result<Vec<RouteNetlinkMessage>, NetError> {
    let sock = open(op)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send_to(&buf, &SocketAddr::new(0, 0), 0).map_err(|e| op.err(e, None))?;

    let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut answers = Vec::new();
    loop {
        let (datagram, _) = sock.recv_from_full().map_err(|e| op.err(e, None))?;
        let mut offset = 0;
        while offset < datagram.len() {
            let bytes = &datagram[offset..];
            let len = NetlinkBuffer::new_checked(bytes)
                .map_err(|e| op.decode(format!("bad netlink header: {e}")))?
                .length() as usize;
            let one = &bytes[..len.min(bytes.len())];
            offset += (len + 3) & !3;
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                .map_err(|e| op.decode(format!("{e:#}")))?;
            if parsed.header.sequence_number != 1 {
                continue; // not ours (e.g. a stray notification)
            }
            match parsed.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => match e.code {
                    None if !is_dump => return Ok(answers),
                    None => {}
                    Some(_) => return Err(op.err(e.to_io(), ext_ack_message(one))),
                },
                _ => {}
            }
        }
    }
}

/// The NLMSGERR_ATTR_MSG string of a capped NLMSG_ERROR, if any.
fn ext_ack_message(message: &[u8]) -> Option<String> {
    let flags = NetlinkBuffer::new_checked(message).ok()?.flags();
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // nlmsghdr, then the errno (4 bytes), then the capped request header.
    let mut tlvs = message.get(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            return Some(String::from_utf8_lossy(&text[..end]).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..)?;
    }
    None
}
