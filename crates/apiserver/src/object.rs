//! Small helpers over objects as JSON: metadata access, timestamps, names, conversion between
//! served and stored versions.

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::resources::Resource;

/// Now as upstream writes `metav1.Time`: RFC 3339 in UTC, whole seconds.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// `metadata`, created when missing (a non-object metadata is replaced).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// No finalizer holds the object: neither `metadata.finalizers` nor, for namespaces,
/// `spec.finalizers` (which the namespace controller clears through `finalize`).
pub fn fully_finalized(obj: &Value) -> bool {
    let spec_finalizers = obj["kind"] == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    finalizers(obj).is_empty() && !spec_finalizers
}

pub fn is_deleting(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null())
}

/// A name from `generateName` plus five random characters, as upstream's name generator does.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let prefix = if prefix.len() > 58 {
        &prefix[..58]
    } else {
        prefix
    };
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Everything but metadata and status: what a change of bumps `metadata.generation`.
pub fn spec_equal(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// Converts a stored object to the version a request is served in.
pub fn to_served(res: &Resource, mut obj: Value) -> Value {
    if !res.converts() {
        return obj;
    }
    match (res.group.as_str(), res.version.as_str(), res.kind.as_str()) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => obj = api::convert::hpa_v2_to_v1(obj),
        ("events.k8s.io", "v1", "Event") => obj = api::convert::core_event_to_events_v1(obj),
        _ => {}
    }
    obj["apiVersion"] = json!(res.api_version());
    obj
}

/// Converts a request's object to the stored version.
pub fn to_stored(res: &Resource, mut obj: Value) -> Value {
    if !res.converts() {
        return obj;
    }
    match (res.group.as_str(), res.version.as_str(), res.kind.as_str()) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => obj = api::convert::hpa_v1_to_v2(obj),
        ("events.k8s.io", "v1", "Event") => obj = api::convert::events_v1_to_core_event(obj),
        _ => {}
    }
    obj["apiVersion"] = json!(if res.storage_group.is_empty() {
        res.storage_version.clone()
    } else {
        format!("{}/{}", res.storage_group, res.storage_version)
    });
    obj
}
