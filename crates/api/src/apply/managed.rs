//! `metadata.managedFields`: decoding entries into per-manager field sets and encoding them back,
//! sorted and timestamped the way kube-apiserver writes them.

use super::fieldpath::Set;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One manager's ownership. Upstream identifies a manager by name, operation, subresource and,
/// for updates only, apiVersion: an applier keeps one entry across versions.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub set: Set,
}

impl Entry {
    pub fn is(
        &self,
        manager: &str,
        operation: Operation,
        api_version: &str,
        subresource: &str,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == Operation::Apply || self.api_version == api_version)
    }
}

/// The managedFields of `obj`, or an error when they are not valid entries.
pub fn decode(obj: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = managed_fields(obj) else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return Err("managedFields must be a list".into());
    };
    let mut out: Vec<Entry> = Vec::with_capacity(list.len());
    for item in list {
        let entry = decode_entry(item)?;
        out.retain(|e| {
            !e.is(
                &entry.manager,
                entry.operation,
                &entry.api_version,
                &entry.subresource,
            )
        });
        out.push(entry);
    }
    Ok(out)
}

fn decode_entry(item: &Value) -> Result<Entry, String> {
    let Value::Object(m) = item else {
        return Err("managedFields entries must be objects".into());
    };
    let text = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let operation = match m.get("operation").and_then(Value::as_str) {
        Some("Apply") => Operation::Apply,
        Some("Update") => Operation::Update,
        other => return Err(format!("unknown operation {:?}", other.unwrap_or_default())),
    };
    let fields_type = text("fieldsType");
    if fields_type != "FieldsV1" {
        return Err(format!("invalid fieldsType {fields_type:?}"));
    }
    let set = match m.get("fieldsV1") {
        Some(v) => Set::from_fields_v1(v)?,
        None => Set::default(),
    };
    Ok(Entry {
        manager: text("manager"),
        operation,
        api_version: text("apiVersion"),
        subresource: text("subresource"),
        time: m.get("time").and_then(Value::as_str).map(str::to_string),
        set,
    })
}

pub fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?
        .get("managedFields")
        .filter(|v| !v.is_null())
}

/// Whether a write asks to reset managedFields: an empty list, or a list of one empty entry.
pub fn is_reset(obj: &Value) -> bool {
    match managed_fields(obj) {
        Some(Value::Array(list)) => match list.as_slice() {
            [] => true,
            [Value::Object(m)] => m.is_empty(),
            _ => false,
        },
        _ => false,
    }
}

/// Writes `entries` into `obj.metadata.managedFields` in upstream's order: by operation, time,
/// manager, apiVersion, subresource. No entries removes the field.
pub fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| seconds(a.time.as_deref()).cmp(&seconds(b.time.as_deref())))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let Some(meta) = obj.as_object_mut().map(|o| {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
    }) else {
        return;
    };
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list = entries.into_iter().map(encode_entry).collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

fn encode_entry(e: Entry) -> Value {
    let mut m = Map::new();
    m.insert("manager".into(), Value::String(e.manager));
    m.insert(
        "operation".into(),
        Value::String(e.operation.as_str().into()),
    );
    m.insert("apiVersion".into(), Value::String(e.api_version));
    if let Some(t) = e.time {
        m.insert("time".into(), Value::String(t));
    }
    m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
    m.insert("fieldsV1".into(), e.set.to_fields_v1());
    if !e.subresource.is_empty() {
        m.insert("subresource".into(), Value::String(e.subresource));
    }
    Value::Object(m)
}

fn seconds(time: Option<&str>) -> i64 {
    time.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second())
}

/// `now` as managedFields store times: RFC 3339 in UTC, truncated to seconds.
pub fn timestamp(now: &str) -> String {
    match now.parse::<jiff::Timestamp>() {
        Ok(t) => jiff::Timestamp::from_second(t.as_second())
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| now.to_string()),
        Err(_) => now.to_string(),
    }
}
