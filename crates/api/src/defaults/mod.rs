//! Upstream's `SetDefaults_*` for built-in kinds, applied to decoded objects before
//! validation: fills exactly the fields upstream fills, so stored objects read back like
//! they do from a real API server.

mod pod;
mod resources;
mod workloads;

use serde_json::{Map, Value, json};

/// Applies upstream's defaults for `group/version, Kind=kind` in place. Unknown kinds
/// (custom resources, kinds without defaults) are left untouched.
pub fn apply(group: &str, version: &str, kind: &str, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (group, kind) {
        ("", "Pod") => pod::pod(root),
        ("", "PodTemplate") => {
            if let Some(t) = child(root, "template") {
                pod::template(t);
            }
        }
        ("", "ReplicationController") => workloads::replication_controller(root),
        ("apps", "Deployment") => workloads::deployment(root),
        ("apps", "ReplicaSet") => workloads::replica_set(root),
        ("apps", "StatefulSet") => workloads::stateful_set(root),
        ("apps", "DaemonSet") => workloads::daemon_set(root),
        ("batch", "Job") => workloads::job(root),
        ("batch", "CronJob") => workloads::cron_job(root),
        ("autoscaling", "HorizontalPodAutoscaler") => workloads::hpa(root, version),
        _ => resources::apply(group, kind, root),
    }
}

/// The Job controller's selector and pod labels, set on create once the uid is known:
/// upstream's `generateSelector` for jobs without `manualSelector: true`.
pub fn job_selector(obj: &mut Value, uid: &str) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = child(root, "spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let labels = ensure(ensure(ensure(spec, "template"), "metadata"), "labels");
    // Labels the user set are kept; a conflict is for validation to reject.
    for (key, value) in [
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("job-name", name.as_str()),
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
    ] {
        labels.entry(key).or_insert_with(|| json!(value));
    }
    let match_labels = ensure(ensure(spec, "selector"), "matchLabels");
    match_labels
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

/// The object under `key`, if it is one.
fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The object under `key`, creating it (or replacing a null) when absent.
fn ensure<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = m.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    let Value::Object(o) = slot else {
        unreachable!("the slot was just made an object")
    };
    o
}

/// Sets a pointer-like field upstream defaults when nil (absent or null here).
fn set(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Sets a string field upstream defaults when empty, Go's zero value.
fn set_str(m: &mut Map<String, Value>, key: &str, value: &str) {
    if m.get(key)
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
    {
        m.insert(key.to_string(), json!(value));
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Each object in the list under `key`.
fn each<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Whether the list or map under `key` is absent or empty (Go's `len(x) == 0`).
fn is_empty(m: &Map<String, Value>, key: &str) -> bool {
    match m.get(key) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Null) | None => true,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests;
