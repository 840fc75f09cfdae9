//! Lenient JSON accessors (every field may be absent or mistyped) and the formatting helpers
//! the printers share: label maps, label selectors, container lists, `IntOrString`.

use serde_json::{Map, Value};

pub(super) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

/// The string at `path`, or `""` (Go's zero value) when absent or not a string.
pub(super) fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The string at `path` if present and non-empty.
pub(super) fn nonempty<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    Some(text(v, path)).filter(|s| !s.is_empty())
}

pub(super) fn int(v: &Value, path: &[&str]) -> Option<i64> {
    let v = at(v, path)?;
    // Go decodes into int32/int64 fields; tolerate floats from sloppy writers.
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// The integer at `path`, or 0.
pub(super) fn int0(v: &Value, path: &[&str]) -> i64 {
    int(v, path).unwrap_or(0)
}

pub(super) fn boolean(v: &Value, path: &[&str]) -> Option<bool> {
    at(v, path).and_then(Value::as_bool)
}

pub(super) fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn object<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

/// Go's `len()` of a slice or map field.
pub(super) fn count(v: &Value, path: &[&str]) -> i64 {
    let n = match at(v, path) {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(m)) => m.len(),
        _ => 0,
    };
    n as i64
}

/// Whether a pointer field is set (present and not null).
pub(super) fn is_set(v: &Value, path: &[&str]) -> bool {
    at(v, path).is_some_and(|v| !v.is_null())
}

pub(super) fn name(obj: &Value) -> &str {
    text(obj, &["metadata", "name"])
}

pub(super) fn s(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

pub(super) fn or_none(v: &str) -> Value {
    s(if v.is_empty() { "<none>" } else { v })
}

/// `IntOrString.String()`; `fallback` when unset.
pub(super) fn int_or_string(v: Option<&Value>, fallback: &str) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => fallback.to_owned(),
    }
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
pub(super) fn format_labels(m: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(&str, &str)> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".to_owned();
    }
    pairs.sort_unstable();
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
}

/// The result of `metav1.LabelSelectorAsSelector(sel).String()`.
#[derive(Debug, PartialEq)]
pub(super) enum Selector {
    /// A nil selector (`labels.Nothing()`), which prints as `""`.
    Nothing,
    /// Printed requirements; `""` for an empty selector (`labels.Everything()`).
    Text(String),
    /// Conversion failed (unknown operator or malformed expression).
    Invalid,
}

pub(super) fn selector(sel: Option<&Value>) -> Selector {
    let Some(sel) = sel.filter(|v| !v.is_null()) else {
        return Selector::Nothing;
    };
    let mut reqs: Vec<(&str, String)> = Vec::new();
    for (k, v) in object(sel, &["matchLabels"]).into_iter().flatten() {
        reqs.push((k, format!("{k}={}", v.as_str().unwrap_or(""))));
    }
    for expr in list(sel, &["matchExpressions"]) {
        let key = text(expr, &["key"]);
        let mut values: Vec<&str> = list(expr, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let printed = match (text(expr, &["operator"]), values.is_empty()) {
            ("In", false) => format!("{key} in ({})", values.join(",")),
            ("NotIn", false) => format!("{key} notin ({})", values.join(",")),
            ("Exists", true) => key.to_owned(),
            ("DoesNotExist", true) => format!("!{key}"),
            _ => return Selector::Invalid,
        };
        reqs.push((key, printed));
    }
    // The internal selector keeps requirements sorted by key.
    reqs.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = reqs.into_iter().map(|(_, p)| p).collect();
    Selector::Text(parts.join(","))
}

/// `metav1.FormatLabelSelector`.
pub(super) fn format_selector(sel: Option<&Value>) -> String {
    match selector(sel) {
        Selector::Invalid => "<error>".to_owned(),
        Selector::Nothing => "<none>".to_owned(),
        Selector::Text(t) if t.is_empty() => "<none>".to_owned(),
        Selector::Text(t) => t,
    }
}

/// `layoutContainerCells`: comma-joined container names and images.
pub(super) fn containers(pod_spec: Option<&Value>) -> (Value, Value) {
    let cs = pod_spec.map_or(&[][..], |spec| list(spec, &["containers"]));
    let names: Vec<&str> = cs.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| text(c, &["image"])).collect();
    (s(names.join(",")), s(images.join(",")))
}

/// `listWithMoreString`: at most three items, then `+ N more...`; `<unset>` when empty.
pub(super) fn list_with_more(items: impl Iterator<Item = String>) -> String {
    const MAX: usize = 3;
    let mut shown = Vec::with_capacity(MAX);
    let mut total = 0;
    for item in items {
        if shown.len() < MAX {
            shown.push(item);
        }
        total += 1;
    }
    let joined = shown.join(",");
    if total > MAX {
        format!("{joined} + {} more...", total - MAX)
    } else if joined.is_empty() {
        "<unset>".to_owned()
    } else {
        joined
    }
}
