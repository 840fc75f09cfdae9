//! Exec and attach sessions over WebSocket channels or SPDY streams: wiring the client's
//! stdin, stdout, stderr, resize and error channels to a [`Session`], then reporting how it
//! ended as upstream does (a `metav1.Status` on the error channel for v4 and later).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::spdy::{self, StreamWriter};
use super::ws::ChannelCodec;
use super::{ExitStatus, OUTPUT_DRAIN_AFTER_EXIT, Reader, Session, StreamFlags, TerminalSize};

/// SPDY protocols exec and attach accept, best first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long a SPDY client has to open the streams it asked for (upstream's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the client to close after we said goodbye.
const LINGER: Duration = Duration::from_secs(5);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE_SIGNAL: u8 = 255;

/// The `metav1.Status` a v4+ client reads on the error channel, and the text an older one
/// reads (nothing on success).
fn status(exit: &ExitStatus, command: Option<&[String]>) -> (serde_json::Value, Option<String>) {
    match exit {
        ExitStatus::Exited(0) => (json!({ "metadata": {}, "status": "Success" }), None),
        ExitStatus::Exited(code) => {
            let what = match command {
                // Go's %v of a []string.
                Some(cmd) => format!(
                    "error executing command [{}], exit code {code}",
                    cmd.join(" ")
                ),
                None => format!("exit code {code}"),
            };
            let message = format!("command terminated with non-zero exit code: {what}");
            (
                json!({
                    "metadata": {}, "status": "Failure", "message": message,
                    "reason": "NonZeroExitCode",
                    "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
                }),
                Some(message),
            )
        }
        ExitStatus::Failed(message) => (
            json!({
                "metadata": {}, "status": "Failure", "message": message,
                "reason": "InternalError", "code": 500,
                "details": { "causes": [{ "message": message }] },
            }),
            Some(message.clone()),
        ),
    }
}

/// Where one output channel goes.
#[derive(Clone)]
enum Out {
    Ws {
        channel: u8,
        codec: ChannelCodec,
        tx: mpsc::Sender<Message>,
    },
    Spdy(StreamWriter),
}

impl Out {
    async fn send(&self, data: Bytes) -> bool {
        match self {
            Out::Ws { channel, codec, tx } => tx.send(codec.encode(*channel, &data)).await.is_ok(),
            Out::Spdy(w) => w.send(data).await.is_ok(),
        }
    }

    async fn finish(&self) {
        // WebSocket channels end with the connection.
        if let Out::Spdy(w) = self {
            w.finish().await;
        }
    }
}

/// A session's client side, whatever the transport.
struct Wiring {
    stdin: Option<mpsc::Receiver<Bytes>>,
    resize: Option<mpsc::Receiver<Bytes>>,
    stdout: Option<Out>,
    stderr: Option<Out>,
    error: Out,
    /// v4+: the error channel carries a JSON Status.
    json_status: bool,
    /// Cancelled when the client has gone away.
    closed: CancellationToken,
}

/// Copies a process output to a channel until EOF (then finishes the channel).
async fn pump_out(mut from: Reader, to: Out) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !to.send(Bytes::copy_from_slice(&buf[..n])).await {
                    return;
                }
            }
        }
    }
    to.finish().await;
}

/// Parses a stream of JSON terminal sizes (`{"Width":80,"Height":24}` one after another, as
/// kubectl writes them) and forwards each.
async fn pump_resize(mut from: mpsc::Receiver<Bytes>, to: mpsc::Sender<TerminalSize>) {
    #[derive(Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = from.recv().await {
        buf.extend_from_slice(&chunk);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
        let mut consumed = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    consumed = it.byte_offset();
                    let size = TerminalSize {
                        width: s.width,
                        height: s.height,
                    };
                    if to.send(size).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!("ignoring a malformed terminal size: {e}");
                    consumed = buf.len();
                    break;
                }
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}

/// Runs a session to its end: pumps the streams, waits for the process, drains its output,
/// reports the status. Returns early (dropping the session) if the client goes away.
async fn drive(session: Session, w: Wiring, command: Option<&[String]>) {
    let Session {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let mut side_tasks = tokio::task::JoinSet::new();
    if let (Some(mut rx), Some(mut pipe)) = (w.stdin, stdin) {
        side_tasks.spawn(async move {
            while let Some(b) = rx.recv().await {
                if pipe.write_all(&b).await.is_err() || pipe.flush().await.is_err() {
                    return;
                }
            }
            let _ = pipe.shutdown().await;
        });
    }
    if let (Some(rx), Some(tx)) = (w.resize, resize) {
        side_tasks.spawn(pump_resize(rx, tx));
    }
    let mut outputs = tokio::task::JoinSet::new();
    if let (Some(r), Some(o)) = (stdout, w.stdout) {
        outputs.spawn(pump_out(r, o));
    }
    if let (Some(r), Some(o)) = (stderr, w.stderr) {
        outputs.spawn(pump_out(r, o));
    }
    let exit = tokio::select! {
        _ = w.closed.cancelled() => return,
        e = exit => e,
    };
    let drained = async { while outputs.join_next().await.is_some() {} };
    tokio::select! {
        _ = w.closed.cancelled() => return,
        _ = tokio::time::timeout(OUTPUT_DRAIN_AFTER_EXIT, drained) => {}
    }
    outputs.abort_all();
    side_tasks.abort_all();
    let (json, text) = status(&exit, command);
    if w.json_status {
        w.error
            .send(Bytes::from(serde_json::to_vec(&json).unwrap_or_default()))
            .await;
    } else if let Some(t) = text {
        w.error.send(Bytes::from(t)).await;
    }
    w.error.finish().await;
}

/// Serves a session on an accepted WebSocket (the 101 is already sent).
pub async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    codec: ChannelCodec,
    flags: StreamFlags,
    session: Session,
    command: Option<Vec<String>>,
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

    let closed = CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let reader_closed = closed.clone();
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(msg) = source.next().await {
            let msg = match msg {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(m) => m,
            };
            let Some((channel, data)) = codec.decode(msg) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(data).await;
                    }
                }
                RESIZE => {
                    let _ = resize_tx.send(data).await;
                }
                // v5: the client closed one of its streams; only stdin matters.
                CLOSE_SIGNAL if codec.version >= 5 && data.first() == Some(&STDIN) => {
                    stdin_tx = None;
                }
                _ => {}
            }
        }
        reader_closed.cancel();
    });

    let out = |channel: u8| Out::Ws {
        channel,
        codec,
        tx: tx.clone(),
    };
    // Upstream writes an empty message on the lowest writable channel once the streams are
    // set up; clients treat it as "connected".
    let first = if flags.stdout {
        STDOUT
    } else if flags.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(codec.encode(first, &[])).await;
    let wiring = Wiring {
        stdin: flags.stdin.then_some(stdin_rx),
        resize: flags.tty.then_some(resize_rx),
        stdout: flags.stdout.then(|| out(STDOUT)),
        stderr: flags.stderr.then(|| out(STDERR)),
        error: out(ERROR),
        json_status: codec.version >= 4,
        closed: closed.clone(),
    };
    drive(session, wiring, command.as_deref()).await;
    if !closed.is_cancelled() {
        let _ = tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    }
    drop(tx);
    let _ = writer.await;
    let mut reader = reader;
    if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}

/// Serves a session on an upgraded SPDY connection speaking `protocol` (one of
/// [`SPDY_PROTOCOLS`], or empty for the oldest).
pub async fn serve_spdy<T>(
    io: T,
    protocol: &str,
    flags: StreamFlags,
    session: Session,
    command: Option<Vec<String>>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let version = match protocol {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    };
    let mut conn = spdy::Connection::start(io);
    let expected = 1
        + usize::from(flags.stdin)
        + usize::from(flags.stdout)
        + usize::from(flags.stderr)
        + usize::from(flags.tty && version >= 3);
    let mut error = None;
    let (mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let mut received = 0;
    while received < expected {
        let s = match tokio::time::timeout_at(deadline, conn.incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("spdy exec: timed out waiting for the client to create streams");
                conn.close(LINGER).await;
                return;
            }
        };
        let kind = s.header("streamtype").unwrap_or_default().to_string();
        let writer = match kind.as_str() {
            "error" | "stdin" | "stdout" | "stderr" | "resize" => s.accept().await,
            other => {
                tracing::debug!("spdy exec: unexpected stream type {other:?}");
                s.reset(spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        received += 1;
        match kind.as_str() {
            "error" => error = Some(writer),
            "stdin" => stdin = Some(s.data),
            "stdout" => stdout = Some(writer),
            "stderr" => stderr = Some(writer),
            _ => resize = Some(s.data),
        }
    }
    let Some(error) = error else {
        conn.close(LINGER).await;
        return;
    };
    let wiring = Wiring {
        stdin: if version == 1 { None } else { stdin },
        resize,
        stdout: stdout.map(Out::Spdy),
        stderr: stderr.map(Out::Spdy),
        error: Out::Spdy(error),
        json_status: version >= 4,
        closed: conn.closed(),
    };
    drive(session, wiring, command.as_deref()).await;
    conn.close(LINGER).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_upstream() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let (ok, text) = status(&ExitStatus::Exited(0), Some(&cmd));
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        assert_eq!(text, None);
        let (bad, text) = status(&ExitStatus::Exited(3), Some(&cmd));
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        assert_eq!(
            text.as_deref(),
            Some(
                "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
            )
        );
        let (failed, _) = status(&ExitStatus::Failed("no such file".into()), None);
        assert_eq!(failed["reason"], "InternalError");
        assert_eq!(failed["message"], "no such file");
    }

    #[tokio::test]
    async fn resize_events_split_across_chunks_are_parsed() {
        let (tx, rx) = mpsc::channel(4);
        let (size_tx, mut size_rx) = mpsc::channel(4);
        let task = tokio::spawn(pump_resize(rx, size_tx));
        for chunk in [
            &b"{\"Width\":80,"[..],
            b"\"Height\":24}\n{\"Width\":100,\"Height\":30}",
            b"garbage{",
            b"{\"Width\":1,\"Height\":2}",
        ] {
            tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(s) = size_rx.recv().await {
            got.push((s.width, s.height));
        }
        task.await.unwrap();
        assert_eq!(got, vec![(80, 24), (100, 30), (1, 2)]);
    }
}
