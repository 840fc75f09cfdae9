//! Watches: a chunked stream of `{"type","object"}` lines from a resourceVersion, with initial
//! events, bookmarks, selectors (objects moving in or out of a selector become ADDED/DELETED),
//! timeouts, and 410 Expired as an in-stream ERROR event, as kube-apiserver does.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use store::{EventType, ListOptions};
use tokio::sync::mpsc;

use crate::codec::Output;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::object;
use crate::rest::{Ctx, Filter, parse_rv, store_error};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

struct Encoder {
    output: Output,
    res: std::sync::Arc<crate::resources::Resource>,
    first_table: bool,
}

impl Encoder {
    fn event(&mut self, ty: &str, obj: Value, ctx: &Ctx<'_>) -> Bytes {
        let obj = object::to_served(&self.res, obj);
        let obj = match self.output {
            Output::Table => {
                let rv = object::meta_str(&obj, "resourceVersion")
                    .unwrap_or_default()
                    .to_string();
                let mut t = crate::tables::table(ctx, std::slice::from_ref(&obj), &rv, None, None);
                if !std::mem::take(&mut self.first_table) {
                    t["columnDefinitions"] = json!([]);
                }
                t
            }
            Output::Metadata => {
                json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({})) })
            }
            _ => obj,
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": ty, "object": obj })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": rv.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let obj = json!({ "kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta });
        let mut line =
            serde_json::to_vec(&json!({ "type": "BOOKMARK", "object": obj })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": "ERROR", "object": e.to_status() }))
        .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub async fn watch(ctx: Ctx<'_>) -> ApiResult<Response<Body>> {
    let filter = Filter::parse(&ctx)?;
    let q = &ctx.req.query;
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.bool("sendInitialEvents");
    if send_initial.is_some() && q.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            &ctx.target(""),
            &[api::validation::FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let timeout = match q.non_empty("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?,
        ),
        None => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let mut prefix = ctx.res.ns_prefix(ctx.ns.as_deref());
    if let Some(name) = filter.fields.name()
        && (ctx.ns.is_some() || !ctx.res.namespaced)
    {
        prefix = ctx.res.key(ctx.ns.as_deref(), name);
    }
    let rv = q.non_empty("resourceVersion").map(parse_rv).transpose()?;
    let initial = match (rv, send_initial) {
        (_, Some(true)) => true,
        (_, Some(false)) => false,
        (None | Some(0), None) => true,
        _ => false,
    };

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let mut enc = Encoder {
        output: ctx.output,
        res: ctx.res.clone(),
        first_table: true,
    };
    let store = ctx.server.store.clone();
    let shutdown = ctx.server.shutdown.clone();
    let table_ctx = TableCtx::from(&ctx);

    // Initial state and the revision the live stream continues from.
    let mut initial_lines = Vec::new();
    let from = if initial {
        let listed = store
            .list(&ListOptions {
                prefix: &prefix,
                ..Default::default()
            })
            .map_err(store_error)?;
        for kv in &listed.items {
            if !kv.key.starts_with(prefix.as_str()) {
                continue;
            }
            if filter.matches_bytes(&kv.value)
                && let Some(line) = encode_line(&mut enc, "ADDED", &kv.value, &table_ctx)
            {
                initial_lines.push(line);
            }
        }
        if send_initial == Some(true) && bookmarks {
            initial_lines.push(enc.bookmark(listed.revision, true));
        }
        listed.revision
    } else {
        let rv = rv.unwrap_or(0);
        if rv > store.revision() {
            crate::rest::wait_for_revision(&ctx, rv).await?;
        }
        rv
    };
    let live = match store.watch(&prefix, from) {
        Ok(w) => Some(w),
        Err(store::Error::Compacted { requested, oldest }) => {
            let e = ApiError::expired(format!("too old resource version: {requested} ({oldest})"));
            initial_lines.push(error_line(&e));
            None
        }
        Err(e) => return Err(store_error(e)),
    };

    // The live stream runs on its own task; it owns copies of what it needs.
    let exact_name = filter.fields.name().map(str::to_string);
    let res = ctx.res.clone();
    let output = ctx.output;
    tokio::spawn(async move {
        for line in initial_lines {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut safe_rv = from;
        let mut enc = Encoder {
            output,
            res: res.clone(),
            first_table: enc.first_table,
        };
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.cancelled() => break,
                _ = ticker.tick(), if bookmarks => {
                    // Every event up to the revision seen one tick ago has been delivered.
                    let line = enc.bookmark(safe_rv, false);
                    safe_rv = safe_rv.max(store.revision());
                    if tx.send(Ok(Frame::data(line))).await.is_err() { break; }
                }
                ev = live.rx.recv() => {
                    let Some(ev) = ev else { break };
                    if let Some(n) = &exact_name
                        && !ev.kv.key.ends_with(&format!("/{n}")) { continue; }
                    let Some(line) = encode_event(&mut enc, &filter, &ev, &table_ctx) else { continue };
                    if tx.send(Ok(Frame::data(line))).await.is_err() { break; }
                }
            }
        }
    });

    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let mut resp = Response::new(body);
    let ct = match ctx.output {
        Output::Table => "application/json;as=Table;v=v1;g=meta.k8s.io",
        _ => "application/json",
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// One store event as a watch line, after selector filtering (a change that moves an object
/// into or out of the selection is ADDED or DELETED).
fn encode_event(
    enc: &mut Encoder,
    filter: &Filter,
    ev: &store::Event,
    table: &TableCtx,
) -> Option<Bytes> {
    // Selectors read only the paths they name (a partial parse); plain JSON and metadata
    // watches splice the stored bytes into the event line, so the common case never builds
    // the object.
    let now = filter.matches_bytes(&ev.kv.value);
    let before = match &ev.prev {
        _ if filter.is_empty() => true,
        Some(p) => filter.matches_bytes(p),
        None => false,
    };
    let ty = match (ev.kind, before, now) {
        (EventType::Added, _, true) => "ADDED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, false) => "DELETED",
        (EventType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    encode_line(enc, ty, &ev.kv.value, table)
}

/// The watch line for a stored object in the requested output.
fn encode_line(enc: &mut Encoder, ty: &str, stored: &[u8], table: &TableCtx) -> Option<Bytes> {
    if !enc.res.converts() {
        match enc.output {
            Output::Json => return Some(raw_event_line(ty, stored)),
            Output::Metadata => {
                let meta = crate::project::raw_metadata(stored)?;
                return Some(raw_metadata_line(ty, meta));
            }
            _ => {}
        }
    }
    let obj = serde_json::from_slice(stored).ok()?;
    Some(table.with(|ctx| enc.event(ty, obj, ctx)))
}

/// The metadata-only (`PartialObjectMetadata`) event line around a stored object's raw
/// `metadata`.
fn raw_metadata_line(ty: &str, meta: &str) -> Bytes {
    let mut line = Vec::with_capacity(meta.len() + 112);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(ty.as_bytes());
    line.extend_from_slice(
        b"\",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":",
    );
    line.extend_from_slice(meta.as_bytes());
    line.extend_from_slice(b"}}\n");
    Bytes::from(line)
}

/// `{"type":"<ty>","object":<stored bytes>}\n` — the stored bytes are already the served JSON.
fn raw_event_line(ty: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(ty.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What the Table encoder needs from a request context, owned so the stream task can keep it.
struct TableCtx {
    server: std::sync::Arc<crate::server::ApiServer>,
    res: std::sync::Arc<crate::resources::Resource>,
    ns: Option<String>,
    req: crate::http::Req,
    output: Output,
}

impl TableCtx {
    fn from(ctx: &Ctx<'_>) -> Self {
        TableCtx {
            server: ctx.server.clone(),
            res: ctx.res.clone(),
            ns: ctx.ns.clone(),
            req: crate::http::Req {
                method: ctx.req.method.clone(),
                path: ctx.req.path.clone(),
                query: ctx.req.query.clone(),
                headers: ctx.req.headers.clone(),
                body: Bytes::new(),
                user: ctx.req.user.clone(),
                upgrade: None,
            },
            output: ctx.output,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Ctx<'_>) -> T) -> T {
        let req = crate::http::Req {
            method: self.req.method.clone(),
            path: self.req.path.clone(),
            query: self.req.query.clone(),
            headers: self.req.headers.clone(),
            body: Bytes::new(),
            user: self.req.user.clone(),
            upgrade: None,
        };
        let ctx = Ctx {
            server: &self.server,
            res: self.res.clone(),
            ns: self.ns.clone(),
            name: None,
            sub: None,
            req,
            output: self.output,
        };
        f(&ctx)
    }
}
