//! A minimal SPDY/3.1 server connection: what kubectl's SPDY client (moby/spdystream) uses for
//! exec, attach and port-forward. Frames per the SPDY/3 draft; name/value header blocks are
//! zlib-compressed with the spec's dictionary, one compression context per direction for the
//! whole connection. There is no maintained SPDY crate, hence this module.
//!
//! Deliberately absent: flow control (spdystream neither sends nor honours WINDOW_UPDATE, and
//! neither do we), server-initiated streams, priorities, SETTINGS. Backpressure comes from
//! bounded channels: a slow consumer of one stream stalls the connection's reader, as it does
//! in spdystream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why a SPDY connection failed.
#[derive(Debug, Error)]
pub enum SpdyError {
    #[error("reading a SPDY frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported SPDY version {0} (only 3 is spoken)")]
    Version(u16),
    #[error("malformed SPDY {kind} frame: {why}")]
    Malformed { kind: &'static str, why: String },
    #[error("SPDY header block: {0}")]
    Headers(String),
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;

/// Largest decompressed header block accepted (kubectl's are a few dozen bytes).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest frame payload accepted; SPDY's own limit is 2^24 - 1.
const MAX_FRAME: usize = (1 << 24) - 1;
/// Data frames we send carry at most this much (spdystream reads any size; small frames keep
/// interactive streams responsive).
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// The SPDY/3 header compression dictionary (SPDY/3 draft, section 2.6.10.1): the listed
/// header names and values, each prefixed by its length as a 32-bit big-endian number,
/// followed by a run of common status codes and values. Built rather than spelled out as
/// 1423 hex bytes; `dictionary_matches_the_spec` pins its length and checksum.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header names and values (names lowercase, as SPDY requires).
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A frame as this connection reads or writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type we ignore (SETTINGS, WINDOW_UPDATE, CREDENTIAL, unknown).
    Ignored {
        kind: u16,
    },
}

/// Compresses header blocks (one zlib stream per connection direction).
pub struct HeaderEncoder {
    z: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Only fails if called after compressing started, which it is not.
        let _ = z.set_dictionary(dictionary());
        HeaderEncoder { z }
    }
}

impl HeaderEncoder {
    pub fn encode(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.to_ascii_lowercase().as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(format!("compressing: {e}")))?;
            let used = (self.z.total_in() - before) as usize;
            input = &input[used..];
            // A sync flush is complete once all input is taken and the output buffer was not
            // filled to the brim.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decompresses header blocks.
pub struct HeaderDecoder {
    z: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
        }
    }
}

impl HeaderDecoder {
    pub fn decode(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let bad = |why: String| SpdyError::Headers(why);
        let mut out: Vec<u8> = Vec::with_capacity(256);
        loop {
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(bad(format!(
                    "decompressed header block exceeds {MAX_HEADER_BLOCK} bytes"
                )));
            }
            if out.capacity() == out.len() {
                out.reserve(out.len().max(256));
            }
            let before = self.z.total_in();
            let r = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.z.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::Ok | Status::BufError) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                }
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| bad(format!("setting the dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(format!("decompressing: {e}"))),
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |why: &str| SpdyError::Headers(why.to_string());
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
        if b.remaining() < 4 {
            return Err(bad("truncated length"));
        }
        let n = b.get_u32() as usize;
        if b.remaining() < n {
            return Err(bad("truncated name or value"));
        }
        let v = b[..n].to_vec();
        b.advance(n);
        Ok(v)
    };
    if b.remaining() < 4 {
        return Err(bad("missing pair count"));
    }
    let count = b.get_u32() as usize;
    if count > 1024 {
        return Err(bad("too many headers"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
        // Several values are separated by NUL; upstream reads the first.
        for v in value.split(|c| *c == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut HeaderDecoder,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::Malformed {
            kind: "any",
            why: format!("length {len}"),
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let fin = flags & FLAG_FIN != 0;
    if word & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            id: word & 0x7fff_ffff,
            fin,
            data: Bytes::from(body),
        }));
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    if version != 3 {
        return Err(SpdyError::Version(version));
    }
    let kind = (word & 0xffff) as u16;
    let need = |n: usize, name: &'static str| {
        if body.len() < n {
            Err(SpdyError::Malformed {
                kind: name,
                why: format!("{} bytes, need {n}", body.len()),
            })
        } else {
            Ok(())
        }
    };
    let u32_at = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(10, "SYN_STREAM")?;
            Frame::SynStream {
                id: u32_at(0) & 0x7fff_ffff,
                fin,
                headers: dec.decode(&body[10..])?,
            }
        }
        TYPE_SYN_REPLY => {
            need(4, "SYN_REPLY")?;
            Frame::SynReply {
                id: u32_at(0) & 0x7fff_ffff,
                fin,
                headers: dec.decode(&body[4..])?,
            }
        }
        TYPE_HEADERS => {
            need(4, "HEADERS")?;
            Frame::Headers {
                id: u32_at(0) & 0x7fff_ffff,
                fin,
                headers: dec.decode(&body[4..])?,
            }
        }
        TYPE_RST_STREAM => {
            need(8, "RST_STREAM")?;
            Frame::RstStream {
                id: u32_at(0) & 0x7fff_ffff,
                status: u32_at(4),
            }
        }
        TYPE_PING => {
            need(4, "PING")?;
            Frame::Ping { id: u32_at(0) }
        }
        TYPE_GOAWAY => {
            need(4, "GOAWAY")?;
            Frame::GoAway {
                last_good: u32_at(0) & 0x7fff_ffff,
                status: if body.len() >= 8 { u32_at(4) } else { 0 },
            }
        }
        other => Frame::Ignored { kind: other },
    };
    Ok(Some(frame))
}

/// Serializes one frame.
pub fn encode_frame(frame: &Frame, enc: &mut HeaderEncoder) -> Result<Vec<u8>, SpdyError> {
    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8003_0000u32 | u32::from(kind)).to_be_bytes());
        out.extend_from_slice(&((u32::from(flags) << 24) | body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let fin = |f: bool| if f { FLAG_FIN } else { 0 };
    Ok(match frame {
        Frame::SynStream {
            id,
            fin: f,
            headers,
        } => {
            let mut body = Vec::new();
            body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&enc.encode(headers)?);
            control(TYPE_SYN_STREAM, fin(*f), &body)
        }
        Frame::SynReply {
            id,
            fin: f,
            headers,
        }
        | Frame::Headers {
            id,
            fin: f,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
            body.extend_from_slice(&enc.encode(headers)?);
            control(kind, fin(*f), &body)
        }
        Frame::RstStream { id, status } => {
            let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(TYPE_RST_STREAM, 0, &body)
        }
        Frame::Ping { id } => control(TYPE_PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(TYPE_GOAWAY, 0, &body)
        }
        Frame::Data { id, fin: f, data } => {
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&((u32::from(fin(*f)) << 24) | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out
        }
        Frame::Ignored { .. } => Vec::new(),
    })
}

/// A stream the peer opened: its headers, what it sends, and a way to answer.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// Data the peer sends; ends (None) when it finishes its side, resets the stream or the
    /// connection ends.
    pub data: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Frame>,
}

impl IncomingStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Accepts the stream (SYN_REPLY) and returns the half that sends to the peer.
    pub async fn accept(&self) -> StreamWriter {
        let _ = self
            .out
            .send(Frame::SynReply {
                id: self.id,
                fin: false,
                headers: Vec::new(),
            })
            .await;
        StreamWriter {
            id: self.id,
            out: self.out.clone(),
        }
    }

    /// Refuses the stream.
    pub async fn reset(&self, status: u32) {
        let _ = self
            .out
            .send(Frame::RstStream {
                id: self.id,
                status,
            })
            .await;
    }
}

/// Sends data on an accepted stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` (in frames of at most `MAX_DATA_CHUNK`). Fails when the connection is gone.
    pub async fn send(&self, mut data: Bytes) -> Result<(), ConnectionClosed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.out
                .send(Frame::Data {
                    id: self.id,
                    fin: false,
                    data: chunk,
                })
                .await
                .map_err(|_| ConnectionClosed)?;
        }
        Ok(())
    }

    /// Finishes our side of the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) {
        let _ = self
            .out
            .send(Frame::Data {
                id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }
}

/// The connection ended before the data could be sent.
#[derive(Debug, Error)]
#[error("the SPDY connection is closed")]
pub struct ConnectionClosed;

/// A server-side SPDY connection: a reader task that parses frames and routes stream data, and
/// a writer task that serializes frames in order.
pub struct Connection {
    /// Streams the peer opens, in order.
    pub incoming: mpsc::Receiver<IncomingStream>,
    out: Option<mpsc::Sender<Frame>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    /// Ends when the peer closes the connection or it fails.
    closed: tokio_util::sync::CancellationToken,
}

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>;

impl Connection {
    /// Starts serving SPDY on an upgraded connection.
    pub fn start<T>(io: T) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let (in_tx, in_rx) = mpsc::channel::<IncomingStream>(16);
        let closed = tokio_util::sync::CancellationToken::new();

        let writer = tokio::spawn(async move {
            let mut enc = HeaderEncoder::default();
            while let Some(frame) = out_rx.recv().await {
                let bytes = match encode_frame(&frame, &mut enc) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!("spdy: encoding a frame failed: {e}");
                        break;
                    }
                };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
                // Flush when nothing else is queued: batches bursts, never delays a lone frame.
                if out_rx.is_empty() && wr.flush().await.is_err() {
                    break;
                }
                if matches!(frame, Frame::GoAway { .. }) {
                    break;
                }
            }
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        });

        let reader_out = out_tx.clone();
        let reader_closed = closed.clone();
        let reader = tokio::spawn(async move {
            let routes: Routes = Arc::default();
            let mut dec = HeaderDecoder::default();
            loop {
                let frame = match read_frame(&mut rd, &mut dec).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("spdy: {e}");
                        break;
                    }
                };
                match frame {
                    Frame::SynStream { id, fin, headers } => {
                        let (tx, rx) = mpsc::channel(16);
                        if !fin {
                            routes
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id, tx);
                        }
                        let s = IncomingStream {
                            id,
                            headers,
                            data: rx,
                            out: reader_out.clone(),
                        };
                        if in_tx.send(s).await.is_err() {
                            // Nobody takes new streams any more: refuse it.
                            let _ = reader_out
                                .send(Frame::RstStream {
                                    id,
                                    status: RST_REFUSED_STREAM,
                                })
                                .await;
                        }
                    }
                    Frame::Data { id, fin, data } => {
                        let route = routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&id)
                            .cloned();
                        if let Some(tx) = route
                            && !data.is_empty()
                        {
                            // A receiver that was dropped just means nobody reads this stream.
                            let _ = tx.send(data).await;
                        }
                        if fin {
                            routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        }
                    }
                    Frame::Headers { id, fin: true, .. } => {
                        routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    }
                    Frame::RstStream { id, .. } => {
                        routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    }
                    Frame::Ping { id } => {
                        // Pings from the client have odd ids; echo them.
                        if id % 2 == 1 {
                            let _ = reader_out.send(Frame::Ping { id }).await;
                        }
                    }
                    Frame::GoAway { .. } => break,
                    Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored { .. } => {}
                }
            }
            // Dropping the routes ends every stream's data: readers see EOF.
            drop(routes);
            reader_closed.cancel();
        });

        Connection {
            incoming: in_rx,
            out: Some(out_tx),
            reader: Some(reader),
            writer: Some(writer),
            closed,
        }
    }

    /// Cancelled when the peer has closed the connection (or it failed).
    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.closed.clone()
    }

    /// Says goodbye (GOAWAY), lets the writer flush everything queued before it and close its
    /// side, then waits (at most `linger`) for the peer to close its side, so that closing
    /// never resets data the peer has not read yet.
    pub async fn close(mut self, linger: Duration) {
        self.incoming.close();
        if let Some(out) = self.out.take() {
            let _ = out
                .send(Frame::GoAway {
                    last_good: 0,
                    status: 0,
                })
                .await;
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
        if let Some(mut reader) = self.reader.take()
            && tokio::time::timeout(linger, &mut reader).await.is_err()
        {
            reader.abort();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_matches_the_spec() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Adler-32 of the dictionary: the dictionary id a zlib stream with it carries.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut enc = HeaderEncoder::default();
        let mut dec = HeaderDecoder::default();
        let blocks: Vec<Headers> = vec![
            vec![("streamtype".into(), "error".into())],
            vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), "8080".into()),
                ("requestid".into(), "0".into()),
            ],
            vec![],
        ];
        for h in &blocks {
            let wire = enc.encode(h).unwrap();
            assert_eq!(&dec.decode(&wire).unwrap(), h);
        }
    }

    #[test]
    fn garbage_header_blocks_are_errors_not_panics() {
        for input in [&b""[..], b"\x78\x9c\xff\xff", b"not zlib at all"] {
            let mut dec = HeaderDecoder::default();
            assert!(dec.decode(input).is_err(), "{input:?}");
        }
        assert!(parse_header_block(b"\0\0\0\x01\0\0\0\x09ab").is_err());
        assert!(parse_header_block(b"\xff\xff\xff\xff").is_err());
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: vec![("streamtype".into(), "stdout".into())],
            },
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                id: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream { id: 3, status: 5 },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good: 1,
                status: 0,
            },
        ];
        let mut enc = HeaderEncoder::default();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode_frame(f, &mut enc).unwrap());
        }
        let mut dec = HeaderDecoder::default();
        let mut r = &wire[..];
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut dec).await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }
}
