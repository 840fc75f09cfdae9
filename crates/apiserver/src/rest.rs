//! Resource requests: get, list, create, update, patch, delete and deletecollection on any
//! stored resource, plus the `status` and `scale` subresources, with upstream's semantics for
//! metadata, preconditions, dry runs, field validation and field management.

use std::sync::Arc;

use api::validation::FieldError;
use bytes::Bytes;
use http::{Method, Response};
use serde_json::{Value, json};
use store::{KeyValue, ListOptions};

use crate::codec::{self, Output, PatchType};
use crate::error::{ApiError, ApiResult, Target};
use crate::http::{Body, Req};
use crate::object::{self, meta, meta_mut, meta_str, now_rfc3339};
use crate::request::ResourcePath;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector, supported_fields};
use crate::server::ApiServer;

/// A resolved resource request.
pub struct Ctx<'a> {
    pub server: &'a Arc<ApiServer>,
    pub res: Arc<Resource>,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub req: Req,
    pub output: Output,
}

impl Ctx<'_> {
    pub fn target(&self, name: &str) -> Target {
        Target {
            group: self.res.group.clone(),
            resource: self.res.plural.clone(),
            kind: self.res.kind.clone(),
            name: name.to_string(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        self.res.key(self.ns.as_deref(), name)
    }

    pub(crate) fn dry_run(&self) -> bool {
        self.req.query.all("dryRun").any(|v| v == "All")
    }

    /// The field manager: the query parameter, or upstream's default from the user agent.
    fn manager(&self) -> ApiResult<String> {
        if let Some(m) = self.req.query.non_empty("fieldManager") {
            if m.len() > 128 || m.chars().any(|c| c.is_control()) {
                return Err(ApiError::bad_request(format!(
                    "fieldManager is invalid: {m:?}"
                )));
            }
            return Ok(m.to_string());
        }
        let ua = self.req.header("user-agent").unwrap_or("unknown");
        Ok(ua.split('/').next().unwrap_or("unknown").to_string())
    }

    fn schema(&self) -> Option<api::schema::SchemaRef<'_>> {
        match &self.res.custom {
            Some(c) => c.root.map(|id| c.schemas.get(id)),
            None => api::schema::builtin().root(&self.res.group, &self.res.version, &self.res.kind),
        }
    }
}

/// Dispatches a resource request.
pub async fn handle(
    server: &Arc<ApiServer>,
    req: Req,
    rp: ResourcePath,
) -> ApiResult<Response<Body>> {
    let res = server
        .resources
        .get(&rp.group, &rp.version, &rp.resource)
        .ok_or_else(ApiError::not_found_path)?;
    if (rp.namespace.is_some() && !res.namespaced)
        || (rp.subresource.is_some()
            && res
                .sub(rp.subresource.as_deref().unwrap_or_default())
                .is_none())
    {
        return Err(ApiError::not_found_path());
    }
    let watch = rp.watch_prefix || req.query.flag("watch");
    let verb = match (&req.method, rp.name.is_some()) {
        (&Method::GET | &Method::HEAD, _) if watch => "watch",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    let attrs = crate::auth::Attributes {
        verb,
        group: &rp.group,
        resource: &rp.resource,
        subresource: rp.subresource.as_deref(),
        namespace: rp.namespace.as_deref(),
        name: rp.name.as_deref(),
        path: &req.path,
    };
    if let crate::auth::Decision::Deny(why) = server.authorizer.authorize(&req.user, &attrs) {
        return Err(ApiError::forbidden(why));
    }
    let allowed = match &rp.subresource {
        Some(s) => res.sub(s).is_some_and(|s| {
            s.verbs.iter().any(|v| v == verb)
                || (verb == "create" && s.verbs.iter().any(|v| v == "create"))
        }),
        None => res.allows(verb),
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let output = codec::negotiate(req.header("accept")).ok_or_else(|| {
        ApiError::not_acceptable("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf")
    })?;
    let ctx = Ctx {
        server,
        res,
        ns: rp.namespace,
        name: rp.name,
        sub: rp.subresource,
        req,
        output,
    };
    if ctx.res.is_virtual {
        return crate::virtual_resources::create(&ctx).await;
    }
    if ctx.res.group == crate::metrics::GROUP {
        return crate::metrics::handle(&ctx, verb).await;
    }
    if ctx.res.group.is_empty() && ctx.res.kind == "Binding" {
        // The core `bindings` resource is the pod binding subresource by another path.
        let body = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
        let pod = meta_str(&body, "name").unwrap_or_default().to_string();
        let pods = server
            .resources
            .get("", "v1", "pods")
            .ok_or_else(ApiError::not_found_path)?;
        let pod_ctx = Ctx {
            res: pods,
            name: Some(pod.clone()),
            sub: Some("binding".into()),
            ..ctx
        };
        return crate::subresources::bind(&pod_ctx, &pod).await;
    }
    match (ctx.sub.as_deref(), verb) {
        (None, "watch") => crate::watch::watch(ctx).await,
        (None, "list") => list(&ctx),
        (None, "get") => get(&ctx),
        (None, "create") => create(&ctx).await,
        (None | Some("status"), "update") => update(&ctx).await,
        (None | Some("status"), "patch") => patch(&ctx).await,
        (Some("status"), "get") => get(&ctx),
        (None, "delete") => delete(&ctx).await,
        (None, "deletecollection") => delete_collection(&ctx).await,
        (Some("scale"), _) => crate::subresources::scale(&ctx, verb).await,
        (Some(sub), _) => crate::subresources::other(&ctx, sub, verb).await,
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// Writes an object (already in the served version) in the form the client asked for.
pub fn object_response(ctx: &Ctx<'_>, code: u16, obj: &Value) -> Response<Body> {
    object_response_with(ctx, code, obj, &[])
}

fn object_response_with(
    ctx: &Ctx<'_>,
    code: u16,
    obj: &Value,
    warnings: &[String],
) -> Response<Body> {
    let mut resp = match ctx.output {
        Output::Table => {
            let table = crate::tables::table(
                ctx,
                std::slice::from_ref(obj),
                &resource_version_of(obj),
                None,
                None,
            );
            crate::http::respond(
                code,
                "application/json;as=Table;v=v1;g=meta.k8s.io",
                serde_json::to_vec(&table).unwrap_or_default(),
            )
        }
        Output::Metadata => {
            let pom = json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({})) });
            crate::http::respond(
                code,
                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
                serde_json::to_vec(&pom).unwrap_or_default(),
            )
        }
        Output::Yaml => crate::http::respond(
            code,
            "application/yaml",
            serde_yaml_ng::to_string(obj).unwrap_or_default(),
        ),
        Output::Json => crate::http::json(code, obj),
    };
    for w in warnings {
        if let Ok(v) = http::HeaderValue::from_str(&format!(
            "299 - {}",
            serde_json::to_string(w).unwrap_or_default()
        )) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
    resp
}

fn resource_version_of(obj: &Value) -> String {
    meta_str(obj, "resourceVersion")
        .unwrap_or_default()
        .to_string()
}

fn parse_stored(kv: &KeyValue) -> ApiResult<Value> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is unreadable: {e}", kv.key)))
}

/// Reads one object in the served version.
pub fn read(ctx: &Ctx<'_>, name: &str) -> ApiResult<(Value, KeyValue)> {
    let kv = ctx
        .server
        .store
        .get(&ctx.key(name))
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(&ctx.target(name)))?;
    let obj = object::to_served(&ctx.res, parse_stored(&kv)?);
    Ok((obj, kv))
}

pub fn store_error(e: store::Error) -> ApiError {
    match e {
        store::Error::Compacted { requested, oldest } => {
            ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
        }
        other => ApiError::internal(other),
    }
}

fn get(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let name = ctx.name.as_deref().unwrap_or_default();
    let (obj, _) = read(ctx, name)?;
    Ok(object_response(ctx, 200, &obj))
}

/// Parsed list options shared by list, watch and deletecollection. Matches stored objects;
/// field selectors see the served form (events.k8s.io's `regarding.name`, say).
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    convert: Option<Arc<Resource>>,
    /// What the selectors read, for partial parses of stored objects.
    paths: crate::project::Paths,
}

impl Filter {
    pub fn parse(ctx: &Ctx<'_>) -> ApiResult<Filter> {
        let labels = LabelSelector::parse(ctx.req.query.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            ctx.req.query.get("fieldSelector").unwrap_or_default(),
            supported_fields(&ctx.res.group, &ctx.res.kind),
        )
        .map_err(ApiError::bad_request)?;
        let convert = ctx.res.converts().then(|| ctx.res.clone());
        let mut paths = crate::project::Paths::default();
        if !labels.is_empty() {
            paths.add(["metadata", "labels"]);
        }
        for f in fields.fields() {
            paths.add(f.split('.'));
        }
        Ok(Filter {
            labels,
            fields,
            convert,
            paths,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether a stored object matches; parses only what the selectors read (converted
    /// kinds are matched in their served form, so they are parsed whole).
    pub fn matches_bytes(&self, bytes: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let parsed = match self.convert {
            Some(_) => serde_json::from_slice::<Value>(bytes).ok(),
            None => self.paths.parse(bytes),
        };
        parsed.is_some_and(|v| self.matches(&v))
    }

    pub fn matches(&self, stored: &Value) -> bool {
        let labels = meta(stored)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        if !self.labels.matches(labels) {
            return false;
        }
        match &self.convert {
            _ if self.fields.is_empty() => true,
            Some(res) => self.fields.matches(&object::to_served(res, stored.clone())),
            None => self.fields.matches(stored),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn decode_continue(token: &str) -> ApiResult<ContinueToken> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token));
    bytes
        .ok()
        .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
        .filter(|t| t.v == "meta.k8s.io/v1")
        .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
}

fn encode_continue(rv: u64, start: &str) -> String {
    use base64::Engine as _;
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&t).unwrap_or_default())
}

/// Waits until the store has reached `rv` (for "not older than" reads), like upstream's 3 s.
pub async fn wait_for_revision(ctx: &Ctx<'_>, rv: u64) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while ctx.server.store.revision() < rv {
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {rv}, current: {}",
                ctx.server.store.revision()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))
}

fn list(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let filter = Filter::parse(ctx)?;
    let limit = match ctx.req.query.non_empty("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?
            .max(0) as usize,
        None => 0,
    };
    let prefix = ctx.res.ns_prefix(ctx.ns.as_deref());
    let mut revision = None;
    let mut start_after = None;
    if let Some(token) = ctx.req.query.non_empty("continue") {
        let t = decode_continue(token)?;
        revision = Some(t.rv);
        start_after = Some(format!("{prefix}{}", t.start));
    } else if let Some(rv) = ctx.req.query.non_empty("resourceVersion") {
        let rv = parse_rv(rv)?;
        let exact = ctx.req.query.get("resourceVersionMatch") == Some("Exact")
            || (ctx.req.query.get("resourceVersionMatch").is_none() && limit > 0 && rv != 0);
        if exact {
            revision = Some(rv);
        } else if rv > ctx.server.store.revision() {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {rv}, current: {}",
                ctx.server.store.revision()
            )));
        }
    }
    let filter_fn = |kv: &KeyValue| filter.matches_bytes(&kv.value);
    let opts = ListOptions {
        prefix: &prefix,
        start_after: start_after.as_deref(),
        limit,
        revision,
        filter: if filter.is_empty() {
            None
        } else {
            Some(&filter_fn)
        },
    };
    let result = ctx.server.store.list(&opts).map_err(|e| match e {
        store::Error::Compacted { .. } if ctx.req.query.non_empty("continue").is_some() => ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        ),
        other => store_error(other),
    })?;
    let continue_token = result.more.then(|| {
        let last = result
            .items
            .last()
            .map(|kv| {
                kv.key
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&kv.key)
                    .to_string()
            })
            .unwrap_or_default();
        encode_continue(result.revision, &last)
    });
    let remaining = result.more.then_some(result.remaining);
    let rv = result.revision.to_string();
    Ok(list_response(
        ctx,
        &result.items,
        &rv,
        continue_token.as_deref(),
        remaining,
    ))
}

/// Renders a list in the negotiated form; plain JSON lists splice stored bytes unparsed.
pub fn list_response(
    ctx: &Ctx<'_>,
    items: &[KeyValue],
    rv: &str,
    cont: Option<&str>,
    remaining: Option<u64>,
) -> Response<Body> {
    match ctx.output {
        Output::Table => {
            // Parsed one at a time as the Table is written, so memory stays flat.
            let objs = items
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .map(|o| object::to_served(&ctx.res, o));
            match crate::tables::table_bytes(ctx, objs, rv, cont, remaining) {
                Ok(bytes) => {
                    crate::http::respond(200, "application/json;as=Table;v=v1;g=meta.k8s.io", bytes)
                }
                Err(e) => crate::http::error(&e),
            }
        }
        Output::Metadata => {
            /// Only the metadata of a stored object is read.
            #[derive(serde::Deserialize)]
            struct MetaOnly<'a> {
                #[serde(borrow)]
                metadata: Option<&'a serde_json::value::RawValue>,
            }
            let head = json!({ "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta(rv, cont, remaining) });
            let mut out = serde_json::to_vec(&head).unwrap_or_default();
            out.pop(); // the closing brace: items follow
            out.extend_from_slice(b",\"items\":[");
            for (i, kv) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
                );
                match serde_json::from_slice::<MetaOnly<'_>>(&kv.value)
                    .ok()
                    .and_then(|m| m.metadata)
                {
                    Some(raw) => out.extend_from_slice(raw.get().as_bytes()),
                    None => out.extend_from_slice(b"{}"),
                }
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
            crate::http::respond(
                200,
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
                out,
            )
        }
        Output::Yaml => {
            let objs: Vec<Value> = items
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .map(|o| object::to_served(&ctx.res, o))
                .collect();
            let list = json!({ "kind": ctx.res.list_kind, "apiVersion": ctx.res.api_version(), "metadata": list_meta(rv, cont, remaining), "items": objs });
            crate::http::respond(
                200,
                "application/yaml",
                serde_yaml_ng::to_string(&list).unwrap_or_default(),
            )
        }
        Output::Json => {
            let head = json!({ "kind": ctx.res.list_kind, "apiVersion": ctx.res.api_version(), "metadata": list_meta(rv, cont, remaining) });
            let mut out = serde_json::to_vec(&head).unwrap_or_default();
            out.pop(); // the closing brace: items follow
            out.extend_from_slice(b",\"items\":[");
            let convert = ctx.res.converts();
            for (i, kv) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if convert {
                    let obj = serde_json::from_slice(&kv.value)
                        .map(|o| object::to_served(&ctx.res, o))
                        .unwrap_or(Value::Null);
                    out.extend_from_slice(&serde_json::to_vec(&obj).unwrap_or_default());
                } else {
                    out.extend_from_slice(&kv.value);
                }
            }
            out.extend_from_slice(b"]}");
            crate::http::respond(200, "application/json", Bytes::from(out))
        }
    }
}

fn list_meta(rv: &str, cont: Option<&str>, remaining: Option<u64>) -> Value {
    let mut m = json!({ "resourceVersion": rv });
    if let Some(c) = cont {
        m["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        m["remainingItemCount"] = json!(r);
    }
    m
}

/// How unknown fields are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

fn field_validation(ctx: &Ctx<'_>) -> ApiResult<FieldValidation> {
    match ctx.req.query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {other}, supported values: Ignore, Warn, Strict"
        ))),
    }
}

/// Checks the object against its schema: wrong types are 422, unknown fields are pruned and,
/// per `fieldValidation`, refused (400) or reported as warnings.
fn check_schema(ctx: &Ctx<'_>, obj: &mut Value, name: &str) -> ApiResult<Vec<String>> {
    let validation = field_validation(ctx)?;
    let Some(schema) = ctx.schema() else {
        return Ok(Vec::new());
    };
    let mode = if ctx.res.custom.is_some() {
        api::schema::validate::Mode::Custom
    } else {
        api::schema::validate::Mode::Builtin
    };
    let report = api::schema::validate::check(schema, obj, mode);
    if !report.errors.is_empty() {
        return Err(ApiError::invalid(&ctx.target(name), &report.errors));
    }
    let unknown: Vec<String> = report
        .unknown_fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}

/// Checks the body's apiVersion and kind against the endpoint, filling them when absent.
fn check_type(ctx: &Ctx<'_>, obj: &mut Value, kind: &str, api_version: &str) -> ApiResult<()> {
    let have_kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let have_av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !have_kind.is_empty() && have_kind != kind {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: the kind in the data ({have_kind}) does not match the expected kind ({kind})",
            ctx.res.version
        )));
    }
    if !have_av.is_empty() && have_av != api_version {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({have_av}) does not match the expected API version ({api_version})"
        )));
    }
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(api_version);
    Ok(())
}

/// Metadata a new object gets from the server (name from generateName, uid, timestamps).
pub fn prepare_new(res: &Resource, obj: &mut Value, name: &str, ns: Option<&str>) {
    let m = meta_mut(obj);
    if !name.is_empty() {
        m.insert("name".into(), json!(name));
    }
    match ns {
        Some(ns) if res.namespaced => {
            m.insert("namespace".into(), json!(ns));
        }
        _ => {
            m.remove("namespace");
        }
    }
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for f in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(f);
    }
    if res.tracks_generation() {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if res.has_status()
        && !matches!(res.kind.as_str(), "Node" | "CustomResourceDefinition")
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
}

/// Name and namespace of a new object, checked against the URL.
fn resolve_name(ctx: &Ctx<'_>, obj: &mut Value) -> ApiResult<String> {
    if let (Some(url_ns), Some(obj_ns)) = (ctx.ns.as_deref(), meta_str(obj, "namespace"))
        && !obj_ns.is_empty()
        && obj_ns != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    if !name.is_empty() {
        return Ok(name);
    }
    match meta_str(obj, "generateName").filter(|g| !g.is_empty()) {
        Some(prefix) => Ok(object::generate_name(prefix)),
        None => Err(ApiError::invalid(
            &ctx.target(""),
            &[FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        )),
    }
}

/// Refuses writes into a namespace that does not exist or is terminating (NamespaceLifecycle).
async fn check_namespace(ctx: &Ctx<'_>, name: &str) -> ApiResult<()> {
    let Some(ns) = ctx.ns.as_deref().filter(|_| ctx.res.namespaced) else {
        return Ok(());
    };
    let key = format!("/registry/core/namespaces/{ns}");
    match ctx.server.store.get(&key).map_err(store_error)? {
        None => Err(ApiError::not_found(&Target {
            group: String::new(),
            resource: "namespaces".into(),
            kind: "Namespace".into(),
            name: ns.into(),
        })),
        Some(kv) => {
            let v = parse_stored(&kv)?;
            if object::is_deleting(&v) || v["status"]["phase"] == "Terminating" {
                let mut e = ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    ctx.res.plural, name
                ));
                e.details = Some(
                    json!({ "kind": ctx.res.plural, "group": ctx.res.group, "causes": [{ "reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace" }] }),
                );
                Err(e)
            } else {
                Ok(())
            }
        }
    }
}

/// Defaulting, then validation; a 422 lists every bad field.
fn default_and_validate(
    ctx: &Ctx<'_>,
    obj: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> ApiResult<()> {
    let (g, v, k) = (
        ctx.res.group.as_str(),
        ctx.res.version.as_str(),
        ctx.res.kind.as_str(),
    );
    if ctx.res.builtin.is_some() {
        api::defaults::apply(g, v, k, obj);
    }
    let errs = api::validation::validate(g, v, k, ctx.res.namespaced, obj, old);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&ctx.target(name), &errs))
    }
}

/// Server-owned metadata and the initial status of a new object.
fn prepare_create(ctx: &Ctx<'_>, obj: &mut Value, name: &str) {
    prepare_new(&ctx.res, obj, name, ctx.ns.as_deref());
    initial_status(&ctx.res, obj);
    if ctx.res.kind == "Job" && ctx.res.group == "batch" {
        let uid = meta_str(obj, "uid").unwrap_or_default().to_string();
        api::defaults::job_selector(obj, &uid);
    }
}

/// Kind-specific state a fresh object starts with.
fn initial_status(res: &Resource, obj: &mut Value) {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            let qos = crate::admission::qos_class(obj);
            obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
        }
        ("", "Namespace") => {
            obj["status"] = json!({ "phase": "Active" });
            obj["spec"] = json!({ "finalizers": ["kubernetes"] });
        }
        ("", "PersistentVolumeClaim" | "PersistentVolume") => {
            obj["status"] = json!({ "phase": "Pending" })
        }
        ("", "Service") => obj["status"] = json!({ "loadBalancer": {} }),
        _ => {}
    }
}

async fn create(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let mut obj = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    check_type(ctx, &mut obj, &ctx.res.kind.clone(), &ctx.res.api_version())?;
    let name = resolve_name(ctx, &mut obj)?;
    let warnings = check_schema(ctx, &mut obj, &name)?;
    prepare_create(ctx, &mut obj, &name);
    default_and_validate(ctx, &mut obj, None, &name)?;
    check_namespace(ctx, &name).await?;
    crate::admission::on_create(ctx, &mut obj)?;
    let manager = ctx.manager()?;
    api::apply::track_update(
        None,
        &mut obj,
        &manager,
        &ctx.res.api_version(),
        ctx.schema(),
        &now_rfc3339(),
    );
    // Allocated values are the server's, not the manager's: taken after field tracking.
    let allocated = crate::service_alloc::on_create(ctx, &mut obj)?;
    if ctx.dry_run() {
        return Ok(object_response_with(ctx, 201, &obj, &warnings));
    }
    let stored = object::to_stored(&ctx.res, obj);
    let kv = ctx
        .server
        .store
        .create(&ctx.key(&name), stored)
        .await
        .map_err(|e| match e {
            store::Error::AlreadyExists { .. } => ApiError::already_exists(&ctx.target(&name)),
            other => store_error(other),
        })?;
    allocated.commit();
    let out = object::to_served(&ctx.res, parse_stored(&kv)?);
    crate::admission::after_write(ctx, &out);
    Ok(object_response_with(ctx, 201, &out, &warnings))
}

/// The result of a read-modify-write: the stored object, or a deletion when the last
/// finalizer of a deleting object went away.
enum Written {
    Stored(Value),
    Deleted(Value),
}

/// Applies `mutate` to the current object and writes it with compare-and-swap, retrying on
/// conflicts unless the client pinned a resourceVersion.
async fn guaranteed_update<F>(
    ctx: &Ctx<'_>,
    name: &str,
    mut mutate: F,
) -> ApiResult<(Written, Vec<String>, bool)>
where
    F: FnMut(&Ctx<'_>, Option<&Value>) -> ApiResult<(Value, Option<u64>)>,
{
    for _ in 0..16 {
        let current = match read(ctx, name) {
            Ok((obj, kv)) => Some((obj, kv)),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let (mut new, pinned) = mutate(ctx, current.as_ref().map(|(o, _)| o))?;
        let Some((old, kv)) = current else {
            // Only apply patches create (the mutate function refuses otherwise).
            let warnings = check_schema(ctx, &mut new, name)?;
            prepare_create(ctx, &mut new, name);
            default_and_validate(ctx, &mut new, None, name)?;
            check_namespace(ctx, name).await?;
            crate::admission::on_create(ctx, &mut new)?;
            let allocated = crate::service_alloc::on_create(ctx, &mut new)?;
            if ctx.dry_run() {
                return Ok((Written::Stored(new), warnings, true));
            }
            let stored = object::to_stored(&ctx.res, new);
            return match ctx.server.store.create(&ctx.key(name), stored).await {
                Ok(kv) => {
                    allocated.commit();
                    Ok((
                        Written::Stored(object::to_served(&ctx.res, parse_stored(&kv)?)),
                        warnings,
                        true,
                    ))
                }
                Err(store::Error::AlreadyExists { .. }) => continue,
                Err(e) => Err(store_error(e)),
            };
        };
        let warnings = check_schema(ctx, &mut new, name)?;
        prepare_update(ctx, &old, &mut new)?;
        default_and_validate(ctx, &mut new, Some(&old), name)?;
        let expected = pinned.unwrap_or(kv.mod_revision);
        if pinned.is_some_and(|p| p != kv.mod_revision) {
            return Err(ApiError::modified(&ctx.target(name)));
        }
        // A deleting object whose last finalizer was just removed is gone now (upstream's
        // ShouldDeleteDuringUpdate); any other update of a deleting object, such as a
        // kubelet's status report during a pod's grace period, keeps it.
        if object::is_deleting(&new)
            && object::fully_finalized(&new)
            && !object::fully_finalized(&old)
            && grace_over(&new)
        {
            if ctx.dry_run() {
                return Ok((Written::Deleted(new), warnings, false));
            }
            return match ctx
                .server
                .store
                .delete(
                    &ctx.key(name),
                    object::to_stored(&ctx.res, new),
                    Some(expected),
                )
                .await
            {
                Ok(kv) => {
                    let out = object::to_served(&ctx.res, parse_stored(&kv)?);
                    crate::admission::after_delete(ctx, &out);
                    Ok((Written::Deleted(out), warnings, false))
                }
                Err(store::Error::Conflict { .. }) if pinned.is_none() => continue,
                Err(store::Error::Conflict { .. }) => Err(ApiError::modified(&ctx.target(name))),
                Err(store::Error::NotFound { .. }) => Err(ApiError::not_found(&ctx.target(name))),
                Err(e) => Err(store_error(e)),
            };
        }
        crate::admission::on_update(ctx, &old, &mut new)?;
        let allocated = crate::service_alloc::on_update(ctx, &old, &mut new)?;
        if ctx.dry_run() || new == old {
            return Ok((Written::Stored(new), warnings, false));
        }
        match ctx
            .server
            .store
            .update(
                &ctx.key(name),
                object::to_stored(&ctx.res, new),
                Some(expected),
            )
            .await
        {
            Ok(kv) => {
                allocated.commit();
                return Ok((
                    Written::Stored(object::to_served(&ctx.res, parse_stored(&kv)?)),
                    warnings,
                    false,
                ));
            }
            Err(store::Error::Conflict { .. }) if pinned.is_none() => continue,
            Err(store::Error::Conflict { .. }) => {
                return Err(ApiError::modified(&ctx.target(name)));
            }
            Err(store::Error::NotFound { .. }) => {
                return Err(ApiError::not_found(&ctx.target(name)));
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::modified(&ctx.target(name)))
}

/// Carries over what an update may not change, keeps the status (or only the status, for the
/// status subresource), bumps the generation on spec changes and tracks field managers.
fn prepare_update(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    let status_only = ctx.sub.as_deref() == Some("status");
    if status_only && ctx.res.custom.is_none() {
        // Built-in status strategies keep the request's metadata (annotations may change, as
        // the deployment controller's revision annotation does) but not its spec or labels.
        if let (Some(n), Some(o)) = (new.as_object_mut(), old.as_object()) {
            n.retain(|k, _| matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"));
            for (k, v) in o.iter().filter(|(k, _)| {
                !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
            }) {
                n.insert(k.clone(), v.clone());
            }
        }
        match meta(old).and_then(|m| m.get("labels")).cloned() {
            Some(l) => {
                meta_mut(new).insert("labels".into(), l);
            }
            None => {
                meta_mut(new).remove("labels");
            }
        }
    } else if status_only {
        // Custom resources: a status write changes only the status (upstream's CR strategy).
        let status = new.get("status").cloned();
        let managed = meta(new).and_then(|m| m.get("managedFields")).cloned();
        *new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        if let Some(mf) = managed {
            meta_mut(new).insert("managedFields".into(), mf);
        }
    } else if ctx.res.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    let old_meta = meta(old).cloned().unwrap_or_default();
    // A uid in the request is a precondition, as upstream treats it.
    if let (Some(want), Some(have)) = (
        meta_str(new, "uid").filter(|u| !u.is_empty()),
        old_meta.get("uid").and_then(Value::as_str),
    ) && want != have
    {
        return Err(ApiError::conflict(
            &ctx.target(object::name(old)),
            &format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
            ),
        ));
    }
    let m = meta_mut(new);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match old_meta.get(f) {
            Some(v) => {
                m.insert(f.into(), v.clone());
            }
            None => {
                m.remove(f);
            }
        }
    }
    // Validation expects the version being replaced; the store stamps the new one.
    if let Some(rv) = old_meta.get("resourceVersion") {
        m.insert("resourceVersion".into(), rv.clone());
    }
    m.remove("selfLink");
    // Namespace finalizers change only through the finalize subresource.
    if ctx.res.group.is_empty() && ctx.res.kind == "Namespace" && ctx.sub.is_none() {
        new["spec"]["finalizers"] = old["spec"]["finalizers"].clone();
    }
    crate::service_alloc::on_prepare_update(ctx, old, new);
    if !status_only && ctx.res.tracks_generation() && !object::spec_equal(old, new) {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta_mut(new).insert("generation".into(), json!(g));
    }
    // Finalizers can only be removed, not added, once deletion started.
    if object::is_deleting(old) {
        let old_f = object::finalizers(old);
        if object::finalizers(new).iter().any(|f| !old_f.contains(f)) {
            return Err(ApiError::invalid(
                &ctx.target(object::name(old)),
                &[FieldError::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )],
            ));
        }
    }
    let manager = ctx.manager()?;
    api::apply::track_update_in(
        scope(ctx),
        Some(old),
        new,
        &manager,
        &ctx.res.api_version(),
        ctx.schema(),
        &now_rfc3339(),
    );
    Ok(())
}

fn updated_response(
    ctx: &Ctx<'_>,
    written: Written,
    warnings: &[String],
    created: bool,
) -> Response<Body> {
    match written {
        Written::Stored(obj) => {
            if !created {
                crate::admission::after_write(ctx, &obj);
            }
            object_response_with(ctx, if created { 201 } else { 200 }, &obj, warnings)
        }
        Written::Deleted(obj) => object_response_with(ctx, 200, &obj, warnings),
    }
}

async fn update(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let name = ctx.name.clone().unwrap_or_default();
    let mut body = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    check_type(
        ctx,
        &mut body,
        &ctx.res.kind.clone(),
        &ctx.res.api_version(),
    )?;
    let body_name = meta_str(&body, "name").unwrap_or_default();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(url_ns), Some(ns)) = (ctx.ns.as_deref(), meta_str(&body, "namespace"))
        && !ns.is_empty()
        && ns != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let pinned = match meta_str(&body, "resourceVersion").filter(|r| !r.is_empty()) {
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
        None => None,
    };
    let (written, warnings, created) =
        guaranteed_update(ctx, &name, |ctx, current| match current {
            Some(_) => Ok((body.clone(), pinned)),
            None => Err(ApiError::not_found(&ctx.target(&name))),
        })
        .await?;
    Ok(updated_response(ctx, written, &warnings, created))
}

async fn patch(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let name = ctx.name.clone().unwrap_or_default();
    let ty = codec::patch_type(ctx.req.header("content-type"))?;
    let patch = codec::decode_patch(ty, &ctx.req.body)?;
    if ty == PatchType::Strategic && ctx.res.custom.is_some() {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json",
        ));
    }
    let force = ctx.req.query.flag("force");
    if ty != PatchType::Apply && ctx.req.query.get("force").is_some() {
        return Err(ApiError::bad_request(
            "force may only be specified with apply patch",
        ));
    }
    if ty == PatchType::Apply && ctx.req.query.non_empty("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let manager = ctx.manager()?;
    let (kind, api_version) = (ctx.res.kind.clone(), ctx.res.api_version());
    let (written, warnings, created) = guaranteed_update(ctx, &name, |ctx, current| {
        let schema = ctx.schema();
        let Some(current) = current else {
            if ty != PatchType::Apply {
                return Err(ApiError::not_found(&ctx.target(&name)));
            }
            let mut applied = patch.clone();
            check_type(ctx, &mut applied, &kind, &api_version)?;
            check_apply_name(ctx, &applied, &name)?;
            let out = api::apply::apply_in(
                scope(ctx),
                None,
                &applied,
                &manager,
                force,
                schema,
                &now_rfc3339(),
            )
            .map_err(|e| apply_error(ctx, &name, e))?;
            return Ok((out, None));
        };
        let patched = match ty {
            PatchType::Json => {
                let mut doc = current.clone();
                api::patch::json::apply(&mut doc, &patch)
                    .map_err(|e| patch_error(ctx, &name, e))?;
                doc
            }
            PatchType::Merge => api::patch::merge::apply(current, &patch),
            PatchType::Strategic => api::patch::strategic::apply(current, &patch, schema)
                .map_err(|e| patch_error(ctx, &name, e))?,
            PatchType::Apply => {
                let mut applied = patch.clone();
                check_type(ctx, &mut applied, &kind, &api_version)?;
                check_apply_name(ctx, &applied, &name)?;
                api::apply::apply_in(
                    scope(ctx),
                    Some(current),
                    &applied,
                    &manager,
                    force,
                    schema,
                    &now_rfc3339(),
                )
                .map_err(|e| apply_error(ctx, &name, e))?
            }
        };
        if !patched.is_object() {
            return Err(ApiError::bad_request(
                "the patch made the object something other than an object",
            ));
        }
        // A patch may pin the resourceVersion (kubectl rollout undo, some controllers).
        let pinned = match meta_str(&patched, "resourceVersion") {
            Some(rv) if Some(rv) != meta_str(current, "resourceVersion") && !rv.is_empty() => {
                Some(parse_rv(rv)?)
            }
            Some(rv) if !rv.is_empty() && patch_sets_rv(&patch) => Some(parse_rv(rv)?),
            _ => None,
        };
        if meta_str(&patched, "name") != Some(name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&patched, "name").unwrap_or_default()
            )));
        }
        Ok((patched, pinned))
    })
    .await?;
    Ok(updated_response(ctx, written, &warnings, created))
}

/// Whether a merge-style patch names `metadata.resourceVersion` itself.
fn patch_sets_rv(patch: &Value) -> bool {
    match patch {
        Value::Object(_) => patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .is_some(),
        Value::Array(ops) => ops.iter().any(|op| {
            op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                && op.get("op").and_then(Value::as_str) != Some("test")
        }),
        _ => false,
    }
}

fn check_apply_name(ctx: &Ctx<'_>, applied: &Value, name: &str) -> ApiResult<()> {
    match meta_str(applied, "name") {
        Some(n) if n == name => Ok(()),
        Some(n) => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        None => Err(ApiError::invalid(
            &ctx.target(name),
            &[FieldError::required("metadata.name", "name is required")],
        )),
    }
}

fn patch_error(ctx: &Ctx<'_>, name: &str, e: api::patch::PatchError) -> ApiError {
    let code = e.http_code();
    match code {
        422 => ApiError::invalid(
            &ctx.target(name),
            &[FieldError::invalid("", Value::Null, e.to_string())],
        ),
        409 => ApiError::conflict(&ctx.target(name), &e.to_string()),
        _ => ApiError::new(
            code,
            if code == 400 {
                "BadRequest"
            } else {
                "InternalError"
            },
            e.to_string(),
        ),
    }
}

fn apply_error(ctx: &Ctx<'_>, name: &str, e: api::apply::ApplyError) -> ApiError {
    match &e {
        api::apply::ApplyError::Conflicts(conflicts) => {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| json!({ "reason": "FieldManagerConflict", "message": c.cause_message(), "field": c.field }))
                .collect();
            let t = ctx.target(name);
            let mut err = ApiError::new(409, "Conflict", e.to_string());
            err.details = Some(
                json!({ "name": t.name, "group": t.group, "kind": t.resource, "causes": causes }),
            );
            err
        }
        other => ApiError::new(
            other.http_code(),
            if other.http_code() == 400 {
                "BadRequest"
            } else {
                "InternalError"
            },
            other.to_string(),
        ),
    }
}

/// Which part of the object a write owns, for field management: the status subresource owns
/// only `status`; the main resource of a kind with a status subresource never owns `status`.
fn scope<'a>(ctx: &'a Ctx<'_>) -> api::apply::Scope<'a> {
    const STATUS: &[&[&str]] = &[&["status"]];
    match ctx.sub.as_deref() {
        Some(sub) => api::apply::Scope {
            subresource: sub,
            reset_fields: &[],
        },
        None if ctx.res.has_status() => api::apply::Scope {
            subresource: "",
            reset_fields: STATUS,
        },
        None => api::apply::Scope::default(),
    }
}

/// DeleteOptions from the body and the query.
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub fn delete_options(ctx: &Ctx<'_>) -> ApiResult<DeleteOptions> {
    let body: Value = if ctx.req.body.is_empty() {
        json!({})
    } else {
        codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?
    };
    let q = &ctx.req.query;
    let grace = match q.non_empty("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}")))?,
        ),
        None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let mut propagation = q
        .non_empty("propagationPolicy")
        .map(str::to_string)
        .or_else(|| {
            body.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let orphan = q
        .get("orphanDependents")
        .map(|v| v == "true")
        .or_else(|| body.get("orphanDependents").and_then(Value::as_bool));
    if let Some(o) = orphan {
        if propagation.is_some() {
            return Err(ApiError::invalid(
                &ctx.target(""),
                &[FieldError::invalid(
                    "propagationPolicy",
                    json!(propagation),
                    "orphanDependents and deletionPropagation cannot be both set",
                )],
            ));
        }
        propagation = Some(if o { "Orphan" } else { "Background" }.into());
    }
    if let Some(p) = &propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::invalid(
            &ctx.target(""),
            &[FieldError::not_supported(
                "propagationPolicy",
                json!(p),
                &["Foreground", "Background", "Orphan"],
            )],
        ));
    }
    Ok(DeleteOptions {
        grace,
        propagation,
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    })
}

async fn delete(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let name = ctx.name.clone().unwrap_or_default();
    let opts = delete_options(ctx)?;
    let (code, obj) = delete_one(ctx, &name, &opts).await?;
    Ok(object_response(ctx, code, &obj))
}

/// Deletes one object: now, or by marking it deleting when finalizers or graceful termination
/// must run first (202).
pub async fn delete_one(
    ctx: &Ctx<'_>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<(u16, Value)> {
    for _ in 0..16 {
        let (mut obj, kv) = read(ctx, name)?;
        if let Some(uid) = &opts.precondition_uid {
            let have = meta_str(&obj, "uid").unwrap_or_default();
            if have != uid {
                return Err(ApiError::conflict(
                    &ctx.target(name),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            let have = meta_str(&obj, "resourceVersion").unwrap_or_default();
            if have != rv {
                return Err(ApiError::conflict(
                    &ctx.target(name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        let mut finalizers = object::finalizers(&obj);
        let was_deleting = object::is_deleting(&obj);
        let policy = opts.propagation.as_deref().unwrap_or("Background");
        let extra = match policy {
            "Orphan" => Some("orphan"),
            "Foreground" => Some("foregroundDeletion"),
            _ => None,
        };
        let mut changed = false;
        if let Some(f) = extra
            && !finalizers.iter().any(|x| x == f)
            && !was_deleting
        {
            finalizers.push(f.to_string());
            changed = true;
        }
        let graceful = crate::admission::grace_period(ctx, &obj, opts.grace);
        if ctx.res.kind == "Namespace" && ctx.res.group.is_empty() {
            // Namespaces are finalized by the namespace controller once empty.
            if !was_deleting {
                let m = meta_mut(&mut obj);
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                obj["status"]["phase"] = json!("Terminating");
                changed = true;
            }
            let has_spec_finalizers = obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if has_spec_finalizers || !finalizers.is_empty() {
                return mark_deleting(ctx, name, obj, finalizers, &kv, changed).await;
            }
        } else if !finalizers.is_empty() || graceful.is_some() {
            if !was_deleting {
                let m = meta_mut(&mut obj);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(graceful_deadline(graceful.unwrap_or(0))),
                );
                m.insert(
                    "deletionGracePeriodSeconds".into(),
                    json!(graceful.unwrap_or(0)),
                );
                changed = true;
            } else if let Some(g) = graceful {
                // A shorter grace period may replace a longer one.
                let current = meta(&obj)
                    .and_then(|m| m.get("deletionGracePeriodSeconds"))
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MAX);
                if g < current {
                    let m = meta_mut(&mut obj);
                    m.insert("deletionTimestamp".into(), json!(graceful_deadline(g)));
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                    changed = true;
                }
            }
            if !finalizers.is_empty() || graceful.is_some_and(|g| g > 0) {
                return mark_deleting(ctx, name, obj, finalizers, &kv, changed).await;
            }
        }
        if ctx.dry_run() {
            return Ok((200, obj));
        }
        match ctx
            .server
            .store
            .delete(
                &ctx.key(name),
                object::to_stored(&ctx.res, obj),
                Some(kv.mod_revision),
            )
            .await
        {
            Ok(kv) => {
                let out = object::to_served(&ctx.res, parse_stored(&kv)?);
                crate::admission::after_delete(ctx, &out);
                return Ok((200, out));
            }
            Err(store::Error::Conflict { .. }) => continue,
            Err(store::Error::NotFound { .. }) => {
                return Err(ApiError::not_found(&ctx.target(name)));
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::modified(&ctx.target(name)))
}

/// Whether a deleting object's grace period no longer holds it: pods in graceful termination
/// are removed by their kubelet, not by the update that dropped their last finalizer.
fn grace_over(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .is_none_or(|g| g == 0)
}

fn graceful_deadline(grace: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace.max(0));
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn mark_deleting(
    ctx: &Ctx<'_>,
    name: &str,
    mut obj: Value,
    finalizers: Vec<String>,
    kv: &KeyValue,
    changed: bool,
) -> ApiResult<(u16, Value)> {
    if !finalizers.is_empty() {
        meta_mut(&mut obj).insert("finalizers".into(), json!(finalizers));
    }
    if !changed || ctx.dry_run() {
        return Ok((202, obj));
    }
    match ctx
        .server
        .store
        .update(
            &ctx.key(name),
            object::to_stored(&ctx.res, obj),
            Some(kv.mod_revision),
        )
        .await
    {
        Ok(kv) => Ok((202, object::to_served(&ctx.res, parse_stored(&kv)?))),
        Err(store::Error::Conflict { .. }) => Err(ApiError::modified(&ctx.target(name))),
        Err(e) => Err(store_error(e)),
    }
}

async fn delete_collection(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let filter = Filter::parse(ctx)?;
    let opts = delete_options(ctx)?;
    let prefix = ctx.res.ns_prefix(ctx.ns.as_deref());
    let listed = ctx
        .server
        .store
        .list(&ListOptions {
            prefix: &prefix,
            ..Default::default()
        })
        .map_err(store_error)?;
    let mut deleted = Vec::new();
    for kv in &listed.items {
        let Ok(obj) = parse_stored(kv) else { continue };
        if !filter.matches(&obj) {
            continue;
        }
        let name = object::name(&obj).to_string();
        let ctx2 = Ctx {
            server: ctx.server,
            res: ctx.res.clone(),
            ns: meta_str(&obj, "namespace").map(str::to_string),
            name: Some(name.clone()),
            sub: None,
            req: clone_req(&ctx.req),
            output: Output::Json,
        };
        match delete_one(&ctx2, &name, &opts).await {
            Ok((_, o)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({ "kind": ctx.res.list_kind, "apiVersion": ctx.res.api_version(), "metadata": { "resourceVersion": ctx.server.store.revision().to_string() }, "items": deleted });
    Ok(crate::http::json(200, &list))
}

fn clone_req(r: &Req) -> Req {
    Req {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
        user: r.user.clone(),
        upgrade: None,
    }
}

/// A write to an object on behalf of a subresource (scale, binding): read, change, CAS.
pub async fn modify<F>(ctx: &Ctx<'_>, name: &str, change: F) -> ApiResult<Value>
where
    F: FnMut(&mut Value) -> ApiResult<()>,
{
    modify_with(ctx, name, true, change).await
}

/// Like `modify`; `validate: false` is for subresources whose own checks replace the update
/// validation (pod binding sets `spec.nodeName`, which a pod update may not change).
pub async fn modify_with<F>(
    ctx: &Ctx<'_>,
    name: &str,
    validate: bool,
    mut change: F,
) -> ApiResult<Value>
where
    F: FnMut(&mut Value) -> ApiResult<()>,
{
    for _ in 0..16 {
        let (old, kv) = read(ctx, name)?;
        let mut new = old.clone();
        change(&mut new)?;
        if ctx.res.tracks_generation() && !object::spec_equal(&old, &new) {
            let g = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        if validate {
            let errs = api::validation::validate(
                &ctx.res.group,
                &ctx.res.version,
                &ctx.res.kind,
                ctx.res.namespaced,
                &new,
                Some(&old),
            );
            if !errs.is_empty() {
                return Err(ApiError::invalid(&ctx.target(name), &errs));
            }
        }
        if ctx.dry_run() || new == old {
            return Ok(new);
        }
        match ctx
            .server
            .store
            .update(
                &ctx.key(name),
                object::to_stored(&ctx.res, new),
                Some(kv.mod_revision),
            )
            .await
        {
            Ok(kv) => return Ok(object::to_served(&ctx.res, parse_stored(&kv)?)),
            Err(store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::modified(&ctx.target(name)))
}
