//! Request handling: routing, query parsing, errors as `metav1.Status`, log streaming, and the
//! upgrades to WebSocket or SPDY for exec, attach and port-forward.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::task::TaskTracker;

use super::ws::{self, ChannelCodec};
use super::{
    AttachRequest, ContainerRef, ExecRequest, LogRequest, PodStreams, StreamError, StreamFlags,
    portforward, remotecommand, stats,
};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An error answer: a `metav1.Status`, which kubectl and the API server understand.
fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut r = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(message: &str) -> Response<Body> {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn stream_error(e: &StreamError) -> Response<Body> {
    match e {
        StreamError::NotFound(m) => status_response(StatusCode::NOT_FOUND, "NotFound", m),
        StreamError::BadRequest(m) => bad_request(m),
        StreamError::Internal(m) => {
            status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m)
        }
    }
}

/// Query parameters, percent-decoded, in order (repeated keys kept).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        fn decode(s: &str) -> String {
            let s = s.replace('+', " ");
            let b = s.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                if b[i] == b'%'
                    && i + 2 < b.len()
                    && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
                {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True" | "TRUE"))
    }

    fn number(&self, k: &str) -> Result<Option<i64>, String> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("{k}: invalid value {v:?}: must be an integer"))
            })
            .transpose()
    }
}

/// Routes one request.
pub async fn handle(
    mut req: Request<Incoming>,
    streams: Arc<dyn PodStreams>,
    sessions: TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let upgrade = hyper::upgrade::on(&mut req);
    let headers = req.headers().clone();
    let stream_method = method == Method::GET || method == Method::POST;
    match (segs.as_slice(), stream_method) {
        (["healthz"], _) if method == Method::GET => full_text("ok"),
        (["containerLogs", ns, pod, container], _) if method == Method::GET => {
            logs(&streams, ns, pod, container, &query).await
        }
        (["stats", "summary"], _) if method == Method::GET => match streams.stats().await {
            Ok(s) => {
                let mut r = Response::new(full(
                    serde_json::to_vec(&stats::summary(&s)).unwrap_or_default(),
                ));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => stream_error(&e),
        },
        ([verb @ ("exec" | "attach"), ns, pod, rest @ ..], true)
            if (1..=2).contains(&rest.len()) =>
        {
            let (uid, container) = match rest {
                [c] => (None, *c),
                [u, c] => (Some(u.to_string()), *c),
                _ => unreachable!("guarded by the length check"),
            };
            let c = ContainerRef {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                uid,
                container: container.to_string(),
            };
            remote_command(
                verb, c, &query, &headers, upgrade, streams, sessions, shutdown,
            )
            .await
        }
        (["portForward", ns, pod, rest @ ..], true) if rest.len() <= 1 => {
            let target = portforward::Target {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                uid: rest.first().map(|u| u.to_string()),
            };
            port_forward(
                target, &query, &headers, upgrade, streams, sessions, shutdown,
            )
        }
        _ => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({method} {path})"),
        ),
    }
}

fn full_text(s: &'static str) -> Response<Body> {
    let mut r = Response::new(full(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn logs(
    streams: &Arc<dyn PodStreams>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
) -> Response<Body> {
    let parsed = (|| -> Result<LogRequest, String> {
        let since_seconds = q.number("sinceSeconds")?;
        let since_time = q
            .get("sinceTime")
            .map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map_err(|e| format!("sinceTime: invalid value {t:?}: {e}"))
            })
            .transpose()?;
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into());
            }
            (Some(s), None) if s < 1 => {
                return Err("sinceSeconds: Invalid value: must be greater than 0".into());
            }
            (Some(s), None) => Some(
                jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(jiff::Timestamp::MIN),
            ),
            (None, t) => t,
        };
        let tail_lines = match q.number("tailLines")? {
            Some(n) if n < 0 => {
                return Err("tailLines: Invalid value: must be greater than or equal to 0".into());
            }
            n => n.map(|n| n as u64),
        };
        let limit_bytes = match q.number("limitBytes")? {
            Some(n) if n < 1 => {
                return Err("limitBytes: Invalid value: must be greater than 0".into());
            }
            n => n.map(|n| n as u64),
        };
        Ok(LogRequest {
            container: ContainerRef {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                uid: None,
                container: container.to_string(),
            },
            follow: q.flag("follow"),
            previous: q.flag("previous"),
            since,
            timestamps: q.flag("timestamps"),
            tail_lines,
            limit_bytes,
        })
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(m) => return bad_request(&m),
    };
    let limit = req.limit_bytes;
    let stream = match streams.logs(req).await {
        Ok(s) => s,
        Err(e) => return stream_error(&e),
    };
    let body = match limit {
        None => stream.boxed(),
        Some(limit) => futures::stream::unfold((stream, limit), |(mut s, left)| async move {
            if left == 0 {
                return None;
            }
            match s.next().await? {
                Ok(mut b) => {
                    if b.len() as u64 > left {
                        b.truncate(left as usize);
                    }
                    let left = left - b.len() as u64;
                    Some((Ok(b), (s, left)))
                }
                Err(e) => Some((Err(e), (s, 0))),
            }
        })
        .boxed(),
    };
    let body = StreamBody::new(body.map(|r| r.map(Frame::data)));
    let mut r = Response::new(BodyExt::boxed_unsync(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Protocols a SPDY client offers in `X-Stream-Protocol-Version` (several headers or a
/// comma-separated list).
fn spdy_offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("x-stream-protocol-version")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy/3.1"))
}

/// A 101 answer for a WebSocket with `protocol` (empty: none).
fn websocket_accept(headers: &HeaderMap, protocol: &str) -> Response<Body> {
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return bad_request("missing Sec-WebSocket-Key");
    };
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(protocol)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    r
}

/// A 101 answer for SPDY/3.1 speaking `protocol`.
fn spdy_accept(protocol: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(protocol)
    {
        h.insert("x-stream-protocol-version", v);
    }
    r
}

/// Picks the first protocol the client offers that we speak; `Ok("")` when it offers none.
fn negotiate(offered: &[String], supported: &[&str]) -> Result<String, String> {
    if offered.is_empty() {
        return Ok(String::new());
    }
    offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
            )
        })
}

#[allow(clippy::too_many_arguments)]
async fn remote_command(
    verb: &str,
    container: ContainerRef,
    q: &Query,
    headers: &HeaderMap,
    upgrade: hyper::upgrade::OnUpgrade,
    streams: Arc<dyn PodStreams>,
    sessions: TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> Response<Body> {
    let tty = q.flag("tty");
    let flags = StreamFlags {
        stdin: q.flag("stdin"),
        stdout: q.flag("stdout"),
        // A terminal has no separate stderr (upstream drops it silently).
        stderr: q.flag("stderr") && !tty,
        tty,
    };
    if !flags.stdin && !flags.stdout && !flags.stderr {
        return bad_request("you must specify at least 1 of stdin, stdout, stderr");
    }
    let command = q.all("command");
    if verb == "exec" && command.is_empty() {
        return bad_request("you must specify at least one command for the container");
    }
    enum Transport {
        Ws(ChannelCodec, String),
        Spdy(String),
    }
    let transport = if ws::is_websocket(headers) {
        let offered = ws::offered_protocols(headers);
        match negotiate(&offered, ws::CHANNEL_PROTOCOLS) {
            Ok(p) => {
                let codec =
                    ChannelCodec::for_protocol(if p.is_empty() { "channel.k8s.io" } else { &p });
                match codec {
                    Some(c) => Transport::Ws(c, p),
                    None => return bad_request("unsupported WebSocket protocol"),
                }
            }
            Err(m) => return bad_request(&m),
        }
    } else if is_spdy(headers) {
        match negotiate(&spdy_offered(headers), remotecommand::SPDY_PROTOCOLS) {
            Ok(p) => Transport::Spdy(p),
            Err(m) => return status_response(StatusCode::FORBIDDEN, "Forbidden", &m),
        }
    } else {
        return bad_request("Upgrade request required");
    };
    let session = if verb == "exec" {
        streams
            .exec(ExecRequest {
                container,
                command: command.clone(),
                streams: flags,
            })
            .await
    } else {
        streams
            .attach(AttachRequest {
                container,
                streams: flags,
            })
            .await
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => return stream_error(&e),
    };
    let command = (verb == "exec").then_some(command);
    match transport {
        Transport::Ws(codec, protocol) => {
            let resp = websocket_accept(headers, &protocol);
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return resp;
            }
            sessions.spawn(async move {
                let io = match upgrade.await {
                    Ok(u) => TokioIo::new(u),
                    Err(e) => {
                        tracing::debug!("exec upgrade failed: {e}");
                        return;
                    }
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                tokio::select! {
                    _ = remotecommand::serve_websocket(ws, codec, flags, session, command) => {}
                    _ = shutdown.cancelled() => {}
                }
            });
            resp
        }
        Transport::Spdy(protocol) => {
            let resp = spdy_accept(&protocol);
            sessions.spawn(async move {
                let io = match upgrade.await {
                    Ok(u) => TokioIo::new(u),
                    Err(e) => {
                        tracing::debug!("exec upgrade failed: {e}");
                        return;
                    }
                };
                tokio::select! {
                    _ = remotecommand::serve_spdy(io, &protocol, flags, session, command) => {}
                    _ = shutdown.cancelled() => {}
                }
            });
            resp
        }
    }
}

fn port_forward(
    target: portforward::Target,
    q: &Query,
    headers: &HeaderMap,
    upgrade: hyper::upgrade::OnUpgrade,
    streams: Arc<dyn PodStreams>,
    sessions: TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> Response<Body> {
    if ws::is_websocket(headers) {
        let offered = ws::offered_protocols(headers);
        if offered.iter().any(|p| p == ws::SPDY_TUNNEL_PROTOCOL) {
            let resp = websocket_accept(headers, ws::SPDY_TUNNEL_PROTOCOL);
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return resp;
            }
            sessions.spawn(async move {
                let Some(io) = upgraded(upgrade).await else {
                    return;
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                tokio::select! {
                    _ = portforward::serve(ws::WsIo::new(ws), target, streams) => {}
                    _ = shutdown.cancelled() => {}
                }
            });
            return resp;
        }
        // The channel form: ports from the query.
        let ports = match portforward::parse_ports(&q.all("port"))
            .or_else(|_| portforward::parse_ports(&q.all("ports")))
        {
            Ok(p) => p,
            Err(m) => return bad_request(&m),
        };
        let protocol = match negotiate(&offered, portforward::WEBSOCKET_PROTOCOLS) {
            Ok(p) => p,
            Err(m) => return bad_request(&m),
        };
        let Some(codec) = ChannelCodec::for_protocol(if protocol.is_empty() {
            "v4.channel.k8s.io"
        } else {
            &protocol
        }) else {
            return bad_request("unsupported WebSocket protocol");
        };
        let resp = websocket_accept(headers, &protocol);
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return resp;
        }
        sessions.spawn(async move {
            let Some(io) = upgraded(upgrade).await else {
                return;
            };
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            tokio::select! {
                _ = portforward::serve_websocket(ws, codec, ports, target, streams) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        return resp;
    }
    if !is_spdy(headers) {
        return bad_request("Upgrade request required");
    }
    let protocol = match negotiate(&spdy_offered(headers), &[portforward::PROTOCOL]) {
        Ok(p) => p,
        Err(m) => return status_response(StatusCode::FORBIDDEN, "Forbidden", &m),
    };
    let resp = spdy_accept(&protocol);
    sessions.spawn(async move {
        let Some(io) = upgraded(upgrade).await else {
            return;
        };
        tokio::select! {
            _ = portforward::serve(io, target, streams) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    resp
}

/// The connection once the 101 is sent.
async fn upgraded(upgrade: hyper::upgrade::OnUpgrade) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match upgrade.await {
        Ok(u) => Some(TokioIo::new(u)),
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_keep_repeats() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo+hi%20there%21&stdin=true&tty=1&bad=%zz&x",
        ));
        assert_eq!(q.all("command"), vec!["sh", "-c", "echo hi there!"]);
        assert!(q.flag("stdin") && q.flag("tty") && !q.flag("stdout"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("x"), Some(""));
        assert!(
            Query::parse(Some("tailLines=abc"))
                .number("tailLines")
                .is_err()
        );
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &offered(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
                ws::CHANNEL_PROTOCOLS
            ),
            Ok("v5.channel.k8s.io".to_string())
        );
        assert_eq!(
            negotiate(
                &offered(&["v9.channel.k8s.io", "v4.channel.k8s.io"]),
                ws::CHANNEL_PROTOCOLS
            ),
            Ok("v4.channel.k8s.io".to_string())
        );
        assert_eq!(
            negotiate(&[], remotecommand::SPDY_PROTOCOLS),
            Ok(String::new())
        );
        assert!(negotiate(&offered(&["nope"]), remotecommand::SPDY_PROTOCOLS).is_err());
    }
}
