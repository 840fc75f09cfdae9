//! API errors as upstream's `Status` objects: the right code, reason, message and details.

use api::validation::FieldError;
use serde_json::{Value, json};

/// Names the resource an error is about, the way upstream's messages do (`deployments.apps`).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub group: String,
    /// Plural resource name (or the kind, for Invalid errors).
    pub resource: String,
    pub kind: String,
    pub name: String,
}

impl Target {
    /// `deployments.apps` or `pods`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_target(mut self, t: &Target, kind_is_resource: bool) -> Self {
        let mut d =
            json!({ "name": t.name, "kind": if kind_is_resource { &t.resource } else { &t.kind } });
        if !t.group.is_empty() {
            d["group"] = json!(t.group);
        }
        if t.name.is_empty() {
            d.as_object_mut().map(|m| m.remove("name"));
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(t: &Target) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", t.group_resource(), t.name),
        )
        .with_target(t, true)
    }

    pub fn already_exists(t: &Target) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", t.group_resource(), t.name),
        )
        .with_target(t, true)
    }

    pub fn conflict(t: &Target, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {why}",
                t.group_resource(),
                t.name
            ),
        )
        .with_target(t, true)
    }

    pub fn modified(t: &Target) -> Self {
        Self::conflict(
            t,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per field error, worded like upstream's `NewInvalid`.
    pub fn invalid(t: &Target, errs: &[FieldError]) -> Self {
        let qualified = if t.group.is_empty() {
            t.kind.clone()
        } else {
            format!("{}.{}", t.kind, t.group)
        };
        let list: Vec<String> = errs.iter().map(FieldError::full_message).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{}\" is invalid: {joined}", t.name),
        )
        .with_target(t, false);
        let causes: Vec<Value> = errs
            .iter()
            .map(|f| json!({ "reason": f.ty.reason(), "message": f.message(), "field": f.field }))
            .collect();
        if let Some(d) = e.details.as_mut() {
            d["causes"] = Value::Array(causes);
        }
        e
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }

    pub fn not_acceptable(msg: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", msg)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// 410 Gone for a resourceVersion older than the retained history.
    pub fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {msg}"),
        )
    }

    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "Timeout", msg)
    }

    pub fn service_unavailable(msg: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", msg)
    }

    pub fn not_found_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

/// A success `Status`, as upstream returns for some deletes.
pub fn success_status(details: Value) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details })
}
