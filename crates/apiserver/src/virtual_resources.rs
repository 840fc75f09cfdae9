//! Create-only resources answered by the server itself: access reviews (`kubectl auth
//! can-i`), self subject review (`kubectl auth whoami`), token review, and core `bindings`.

use http::Response;
use serde_json::{Value, json};

use crate::auth::{Attributes, Decision, UserInfo};
use crate::codec;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::rest::Ctx;

fn decide(ctx: &Ctx<'_>, user: &UserInfo, attrs: &Value) -> Value {
    let ra = &attrs["resourceAttributes"];
    let nra = &attrs["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (verb, group, resource, sub, ns, name, path) = if ra.is_object() {
        (
            s(&ra["verb"]),
            s(&ra["group"]),
            s(&ra["resource"]),
            s(&ra["subresource"]),
            s(&ra["namespace"]),
            s(&ra["name"]),
            String::new(),
        )
    } else {
        (
            s(&nra["verb"]),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            s(&nra["path"]),
        )
    };
    let a = Attributes {
        verb: &verb,
        group: &group,
        resource: &resource,
        subresource: (!sub.is_empty()).then_some(sub.as_str()),
        namespace: (!ns.is_empty()).then_some(ns.as_str()),
        name: (!name.is_empty()).then_some(name.as_str()),
        path: &path,
    };
    match ctx.server.authorizer.authorize(user, &a) {
        Decision::Allow => {
            json!({ "allowed": true, "reason": "allowed: every authenticated user may act until RBAC is enabled" })
        }
        Decision::Deny(why) => json!({ "allowed": false, "denied": true, "reason": why }),
    }
}

fn user_from_spec(spec: &Value) -> UserInfo {
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: spec["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub async fn create(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let mut obj = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    obj["apiVersion"] = json!(ctx.res.api_version());
    obj["kind"] = json!(ctx.res.kind);
    let status = match ctx.res.kind.as_str() {
        "SelfSubjectAccessReview" => decide(ctx, &ctx.req.user, &obj["spec"]),
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let user = user_from_spec(&obj["spec"]);
            decide(ctx, &user, &obj["spec"])
        }
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"] }],
            "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            "incomplete": false,
        }),
        "SelfSubjectReview" => json!({ "userInfo": ctx.req.user.to_json() }),
        "TokenReview" => {
            let token = obj["spec"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            match ctx.server.authenticate_token(&headers) {
                Some(u) => {
                    json!({ "authenticated": true, "user": u.to_json(), "audiences": obj["spec"]["audiences"].clone() })
                }
                None => json!({ "authenticated": false, "error": "invalid bearer token" }),
            }
        }
        other => {
            return Err(ApiError::method_not_allowed(format!(
                "{other} cannot be created"
            )));
        }
    };
    obj["status"] = status;
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    Ok(crate::http::json(201, &obj))
}
