//! Port-forward over SPDY (`portforward.k8s.io`): every forwarded client connection opens an
//! `error` and a `data` stream sharing a `requestID` and naming the `port`; once both are
//! there the data stream is joined to a connection into the pod, and failures are written to
//! the error stream, as upstream's kubelet does. Also the older WebSocket form
//! (`v4.channel.k8s.io`, what the Python client uses): the ports come in the `ports` query
//! parameter, each gets a data channel (2i) and an error channel (2i+1), and each channel's
//! first message is the port as a little-endian u16.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::spdy::{self, IncomingStream, StreamWriter};
use super::ws::ChannelCodec;
use super::{PodStreams, PortForwardRequest};

/// WebSocket channel protocols port-forward accepts (besides the SPDY tunnel).
pub const WEBSOCKET_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The `ports` query parameter: one or more values, each a comma-separated list.
pub fn parse_ports(values: &[String]) -> Result<Vec<u16>, String> {
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            match p.trim().parse::<u16>() {
                Ok(0) => return Err(format!("port {v:?} must be > 0")),
                Ok(n) => ports.push(n),
                Err(e) => return Err(format!("unable to parse {v:?} as a port: {e}")),
            }
        }
    }
    Ok(ports)
}

/// Serves port-forward on an accepted channel WebSocket: one pod connection per port, for
/// as long as the pod side or the client keeps it open.
pub async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    codec: ChannelCodec,
    ports: Vec<u16>,
    target: Target,
    streams: Arc<dyn PodStreams>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut inputs = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = tx.send(codec.encode(data_ch, &port.to_le_bytes())).await;
        let _ = tx.send(codec.encode(err_ch, &port.to_le_bytes())).await;
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        let req = PortForwardRequest {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
            uid: target.uid.clone(),
            port: *port,
        };
        forwards.spawn(forward_channel(
            streams.clone(),
            req,
            codec,
            (data_ch, err_ch),
            in_rx,
            tx.clone(),
        ));
    }
    let reader = async move {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = codec.decode(msg) else {
                continue;
            };
            // Only data channels (even) carry client bytes.
            if channel % 2 == 0
                && let Some(input) = inputs.get(usize::from(channel / 2))
            {
                let _ = input.send(data).await;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = async { while forwards.join_next().await.is_some() {} } => {
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
        }
    }
    forwards.abort_all();
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// One port of a WebSocket port-forward.
async fn forward_channel(
    streams: Arc<dyn PodStreams>,
    req: PortForwardRequest,
    codec: ChannelCodec,
    (data_ch, err_ch): (u8, u8),
    mut input: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
) {
    let port = req.port;
    let who = format!(
        "pod {}, uid {}",
        req.pod,
        req.uid.clone().unwrap_or_default()
    );
    let conn = match streams.port_forward(req).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to {who}: {e}");
            let _ = out.send(codec.encode(err_ch, msg.as_bytes())).await;
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let upstream = async {
        while let Some(b) = input.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; spdy::MAX_DATA_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(codec.encode(data_ch, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(downstream);
    tokio::select! {
        _ = &mut downstream => {}
        _ = upstream => downstream.await,
    }
}

/// The protocol name in `X-Stream-Protocol-Version`.
pub const PROTOCOL: &str = "portforward.k8s.io";

/// How long a pair may wait for its second stream (upstream's stream creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Which pod the connection forwards to.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
}

struct Half {
    port: u16,
    writer: StreamWriter,
    data: mpsc::Receiver<Bytes>,
}

#[derive(Default)]
struct Pair {
    error: Option<Half>,
    data: Option<Half>,
    started: Option<tokio::time::Instant>,
}

/// Serves port-forward streams until the client closes the connection.
pub async fn serve<T>(io: T, target: Target, streams: Arc<dyn PodStreams>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = spdy::Connection::start(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let closed = conn.closed();
    loop {
        let s: IncomingStream = tokio::select! {
            s = conn.incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.started.is_some_and(|t| now - t > PAIR_TIMEOUT))
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in expired {
                    if let Some(p) = pairs.remove(&id)
                        && let Some(e) = p.error
                    {
                        let msg = format!("timed out waiting for the data stream of request {id}");
                        let _ = e.writer.send(Bytes::from(msg)).await;
                        e.writer.finish().await;
                    }
                }
                continue;
            }
            _ = closed.cancelled() => break,
        };
        let port = match s.header("port").map(str::parse::<u16>) {
            Some(Ok(p)) if p > 0 => p,
            _ => {
                tracing::debug!(headers = ?s.headers, "port-forward stream without a valid port");
                s.reset(spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        let kind = s.header("streamtype").unwrap_or_default().to_string();
        if kind != "error" && kind != "data" {
            s.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        // Old clients send no request id; upstream pairs consecutive odd stream ids then.
        let request = match s.header("requestid") {
            Some(r) => r.to_string(),
            None if kind == "error" => s.id.to_string(),
            None => s.id.saturating_sub(2).to_string(),
        };
        let writer = s.accept().await;
        let half = Half {
            port,
            writer,
            data: s.data,
        };
        let pair = pairs.entry(request.clone()).or_default();
        pair.started.get_or_insert_with(tokio::time::Instant::now);
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            let _ = half
                .writer
                .send(Bytes::from(format!(
                    "error processing stream for request {request}: {kind} stream already assigned"
                )))
                .await;
            half.writer.finish().await;
            continue;
        }
        *slot = Some(half);
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request)
            else {
                continue;
            };
            let req = PortForwardRequest {
                namespace: target.namespace.clone(),
                pod: target.pod.clone(),
                uid: target.uid.clone(),
                port: data.port,
            };
            tasks.spawn(forward(streams.clone(), req, error, data));
        }
    }
    tasks.abort_all();
    conn.close(Duration::from_secs(5)).await;
}

/// One forwarded connection: data stream ⇄ pod connection; errors on the error stream; both
/// streams finished at the end (kubectl waits for the error stream to end).
async fn forward(streams: Arc<dyn PodStreams>, req: PortForwardRequest, error: Half, data: Half) {
    let Half {
        writer: data_out,
        data: mut data_in,
        ..
    } = data;
    let port = req.port;
    let who = format!(
        "pod {}, uid {}",
        req.pod,
        req.uid.clone().unwrap_or_default()
    );
    match streams.port_forward(req).await {
        Err(e) => {
            let msg = format!("error forwarding port {port} to {who}: {e}");
            tracing::debug!("{msg}");
            let _ = error.writer.send(Bytes::from(msg)).await;
        }
        Ok(conn) => {
            let (mut rd, mut wr) = tokio::io::split(conn);
            let upstream = async {
                while let Some(b) = data_in.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let downstream = async {
                let mut buf = vec![0u8; spdy::MAX_DATA_CHUNK];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if data_out
                                .send(Bytes::copy_from_slice(&buf[..n]))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                data_out.finish().await;
            };
            // Like upstream, the pod closing its side ends the forward; the client finishing
            // its side only half-closes the pod connection.
            tokio::pin!(downstream);
            tokio::select! {
                _ = &mut downstream => {}
                _ = upstream => downstream.await,
            }
            error.writer.finish().await;
            return;
        }
    }
    data_out.finish().await;
    error.writer.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_upstream() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_ports(&v(&["80", "443,8080"])),
            Ok(vec![80, 443, 8080])
        );
        assert!(parse_ports(&[]).is_err());
        assert!(parse_ports(&v(&[""])).is_err());
        assert!(parse_ports(&v(&["0"])).is_err());
        assert!(parse_ports(&v(&["70000"])).is_err());
        assert!(parse_ports(&v(&["http"])).is_err());
    }
}
