//! Forwarding of names outside the cluster to the configured upstream servers, in order: UDP
//! first, TCP when the answer comes back truncated. No cache: the upstreams are expected to be
//! caching resolvers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long one upstream gets to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries forwarded at once; beyond this a client gets SERVFAIL at once rather than more
/// sockets being opened for it.
const MAX_IN_FLIGHT: usize = 512;
/// The EDNS buffer advertised upstream: large enough for most answers without TCP, small
/// enough not to fragment (DNS flag day 2020).
const UPSTREAM_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many queries being forwarded")]
    Busy,
    #[error("no upstream answered {name} {qtype}: {last}")]
    NoAnswer {
        name: Name,
        qtype: RecordType,
        last: String,
    },
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    in_flight: Semaphore,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The first upstream's answer to `name` `qtype` (with recursion desired).
    pub async fn query(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Result<Message, Error> {
        let _permit = self.in_flight.try_acquire().map_err(|_| Error::Busy)?;
        let mut query = Query::query(name.clone(), qtype);
        query.set_query_class(qclass);
        let mut last = String::from("no upstream configured");
        for upstream in &self.upstreams {
            let id: u16 = rand::random();
            let mut request = Message::new(id, MessageType::Query, OpCode::Query);
            request.metadata.recursion_desired = true;
            request.add_query(query.clone());
            let mut edns = Edns::new();
            edns.set_max_payload(UPSTREAM_PAYLOAD);
            request.set_edns(edns);
            let bytes = match request.to_vec() {
                Ok(b) => b,
                Err(e) => {
                    last = format!("encoding the query: {e}");
                    break;
                }
            };
            let answer = match ask_udp(*upstream, &bytes, &query, id).await {
                Ok(a) if a.metadata.truncation => ask_tcp(*upstream, &bytes, &query, id).await,
                other => other,
            };
            match answer {
                Ok(a) => return Ok(a),
                Err(e) => last = format!("{upstream}: {e}"),
            }
        }
        Err(Error::NoAnswer {
            name: name.clone(),
            qtype,
            last,
        })
    }
}

/// Whether `answer` answers request `id` for `query`.
fn matches(answer: &Message, query: &Query, id: u16) -> bool {
    answer.metadata.id == id
        && answer.metadata.message_type == MessageType::Response
        && match answer.queries.as_slice() {
            [q] => {
                q.query_type() == query.query_type()
                    && q.query_class() == query.query_class()
                    && q.name().eq_ignore_root(query.name())
            }
            // A server may drop the question from an error answer.
            [] => answer.metadata.response_code != hickory_proto::op::ResponseCode::NoError,
            _ => false,
        }
}

async fn ask_udp(
    upstream: SocketAddr,
    bytes: &[u8],
    query: &Query,
    id: u16,
) -> Result<Message, String> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("binding a UDP socket: {e}"))?;
    // Connected: the kernel drops datagrams from anyone but the upstream.
    socket
        .connect(upstream)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    socket
        .send(bytes)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer within {UPSTREAM_TIMEOUT:?}"))?
            .map_err(|e| format!("receiving: {e}"))?;
        // Anything else (a stray or forged datagram) is ignored until the deadline.
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && matches(&answer, query, id)
        {
            return Ok(answer);
        }
    }
}

async fn ask_tcp(
    upstream: SocketAddr,
    bytes: &[u8],
    query: &Query,
    id: u16,
) -> Result<Message, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| format!("connecting over TCP: {e}"))?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| format!("sending over TCP: {e}"))?;
        let len = stream
            .read_u16()
            .await
            .map_err(|e| format!("receiving over TCP: {e}"))?;
        let mut buf = vec![0u8; usize::from(len)];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("receiving over TCP: {e}"))?;
        let answer = Message::from_vec(&buf).map_err(|e| format!("decoding the answer: {e}"))?;
        if !matches(&answer, query, id) {
            return Err("the answer over TCP is for another query".to_string());
        }
        Ok(answer)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer over TCP within {UPSTREAM_TIMEOUT:?}"))?
}
