//! WebSocket pieces: the handshake answer, Kubernetes' channel subprotocols
//! (`v5.channel.k8s.io` and older, raw and base64), and a byte-stream view of a WebSocket for
//! SPDY tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Sink, Stream};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The channel subprotocols exec and attach accept, best first (the client's order decides).
pub const CHANNEL_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "v5.base64.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.base64.channel.k8s.io",
    "v2.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

/// Port-forward's SPDY-in-WebSocket subprotocol (kubectl ≥ 1.31).
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Whether the request asks to become a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: http::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(want))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// The subprotocols a client offers, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// How a channel protocol frames messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCodec {
    /// `v4` and later: the error channel carries a JSON `Status`; before, plain text.
    pub version: u8,
    /// `base64.` variants: text messages, channel as an ASCII digit, base64 payload.
    pub base64: bool,
}

impl ChannelCodec {
    pub fn for_protocol(p: &str) -> Option<ChannelCodec> {
        if !CHANNEL_PROTOCOLS.contains(&p) {
            return None;
        }
        let base64 = p.contains("base64.");
        let version = match p.get(..3) {
            Some("v5.") => 5,
            Some("v4.") => 4,
            Some("v3.") => 3,
            Some("v2.") => 2,
            _ => 1,
        };
        Some(ChannelCodec { version, base64 })
    }

    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push(char::from(b'0' + channel));
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            Message::Text(s.into())
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
    }

    /// A data message's channel and payload; `None` for anything else (control frames,
    /// empty or undecodable messages).
    pub fn decode(self, msg: Message) -> Option<(u8, Bytes)> {
        match msg {
            Message::Binary(b) if !b.is_empty() && !self.base64 => Some((b[0], b.slice(1..))),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let t = t.as_str();
                let channel = t.as_bytes()[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .ok()?;
                Some((channel, Bytes::from(data)))
            }
            // v5 close signals are binary even for base64 clients.
            Message::Binary(b) if !b.is_empty() && b[0] == 255 => Some((b[0], b.slice(1..))),
            _ => None,
        }
    }
}

/// A WebSocket seen as a byte stream: binary message payloads in order, each write one
/// binary message. Ping/pong and text messages are not data.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.pending = b,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_err)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) | Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(ws_err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn codecs_follow_the_protocol_name() {
        let cases = [
            ("v5.channel.k8s.io", Some((5, false))),
            ("v4.channel.k8s.io", Some((4, false))),
            ("channel.k8s.io", Some((1, false))),
            ("v4.base64.channel.k8s.io", Some((4, true))),
            ("base64.channel.k8s.io", Some((1, true))),
            ("SPDY/3.1+portforward.k8s.io", None),
            ("", None),
        ];
        for (p, want) in cases {
            assert_eq!(
                ChannelCodec::for_protocol(p).map(|c| (c.version, c.base64)),
                want,
                "{p}"
            );
        }
    }

    #[test]
    fn channel_messages_round_trip() {
        for base64 in [false, true] {
            let c = ChannelCodec { version: 4, base64 };
            let m = c.encode(1, b"hi\n");
            assert_eq!(c.decode(m), Some((1, Bytes::from_static(b"hi\n"))));
        }
        let raw = ChannelCodec {
            version: 5,
            base64: false,
        };
        assert_eq!(raw.decode(Message::Binary(Bytes::new())), None);
        let b64 = ChannelCodec {
            version: 4,
            base64: true,
        };
        assert_eq!(b64.decode(Message::Text("0!!notbase64".into())), None);
        assert_eq!(
            b64.decode(Message::Binary(Bytes::from_static(&[255, 0]))),
            Some((255, Bytes::from_static(&[0])))
        );
    }
}
