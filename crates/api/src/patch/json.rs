//! RFC 6902 JSON patch with the behaviour (and error texts) of the evanphx/json-patch v4 library
//! kube-apiserver uses, including its quirks: negative array indices, `replace` on a missing
//! object member adds it, and `test` against a missing member passes for a `null` value.

use super::PatchError;
use serde_json::Value;

/// Applies `patch` (a JSON array of operations) to `doc`. All or nothing: on error `doc` is left
/// as it was.
pub fn apply(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = decode(patch)?;
    let mut work = doc.clone();
    for op in ops {
        apply_op(&mut work, op).map_err(PatchError::Invalid)?;
    }
    *doc = work;
    Ok(())
}

/// The operation objects of a patch, rejecting what Go's decoder would not accept.
fn decode(patch: &Value) -> Result<Vec<&serde_json::Map<String, Value>>, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            go_type(patch)
        )));
    };
    ops.iter()
        .map(|op| match op {
            Value::Object(m) => Ok(m),
            other => Err(PatchError::BadRequest(format!(
                "json: cannot unmarshal {} into Go value of type jsonpatch.Operation",
                go_type(other)
            ))),
        })
        .collect()
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

const MISSING: &str = "missing value";
const INVALID_INDEX: &str = "invalid index referenced";

fn apply_op(doc: &mut Value, op: &serde_json::Map<String, Value>) -> Result<(), String> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
    let path = op.get("path").and_then(Value::as_str);
    let from = op.get("from").and_then(Value::as_str);
    // A missing "value" decodes to a nil node, which serializes as null.
    let value = || op.get("value").cloned().unwrap_or(Value::Null);
    match kind {
        "add" => {
            let path =
                path.ok_or_else(|| format!("add operation failed to decode path: {MISSING}"))?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!("add operation does not apply: doc is missing path: \"{path}\": {MISSING}")
            })?;
            add(con, &key, value()).map_err(|e| format!("error in add for path: '{path}': {e}"))
        }
        "remove" => {
            let path =
                path.ok_or_else(|| format!("remove operation failed to decode path: {MISSING}"))?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!(
                    "remove operation does not apply: doc is missing path: \"{path}\": {MISSING}"
                )
            })?;
            remove(con, &key)
                .map(drop)
                .map_err(|e| format!("error in remove for path: '{path}': {e}"))
        }
        "replace" => {
            let path = path.ok_or_else(|| {
                format!("replace operation failed to decode path: operation missing path field: {MISSING}")
            })?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!("replace operation does not apply: doc is missing path: {path}: {MISSING}")
            })?;
            match con {
                Value::Object(m) => {
                    m.insert(key, value());
                }
                Value::Array(a) => {
                    let idx = existing_index(a, &key).map_err(|_| {
                        format!("replace operation does not apply: doc is missing key: {path}: {MISSING}")
                    })?;
                    a[idx] = value();
                }
                _ => {
                    return Err(format!(
                        "replace operation does not apply: doc is missing path: {path}: {MISSING}"
                    ));
                }
            }
            Ok(())
        }
        "move" => {
            let from = from.ok_or_else(|| {
                format!(
                    "move operation failed to decode from: operation, missing from field: {MISSING}"
                )
            })?;
            let (con, key) = find(doc, from).ok_or_else(|| {
                format!(
                    "move operation does not apply: doc is missing from path: {from}: {MISSING}"
                )
            })?;
            let moved =
                remove(con, &key).map_err(|e| format!("error in move for path: '{key}': {e}"))?;
            let path = path.ok_or_else(|| {
                format!(
                    "move operation failed to decode path: operation missing path field: {MISSING}"
                )
            })?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!("move operation does not apply: doc is missing destination path: {path}: {MISSING}")
            })?;
            add(con, &key, moved).map_err(|e| format!("error in move for path: '{path}': {e}"))
        }
        "copy" => {
            let from = from.ok_or_else(|| {
                format!(
                    "copy operation failed to decode from: operation, missing from field: {MISSING}"
                )
            })?;
            let (con, key) = find(doc, from).ok_or_else(|| {
                format!(
                    "copy operation does not apply: doc is missing from path: {from}: {MISSING}"
                )
            })?;
            let copied = get(con, &key)
                .map_err(|e| format!("error in copy for from: '{from}': {e}"))?
                .cloned()
                .unwrap_or(Value::Null);
            let path =
                path.ok_or_else(|| format!("copy operation failed to decode path: {MISSING}"))?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!("copy operation does not apply: doc is missing destination path: {path}: {MISSING}")
            })?;
            add(con, &key, copied).map_err(|e| format!("error while adding value during copy: {e}"))
        }
        "test" => {
            let path = path.ok_or_else(|| {
                format!(
                    "test operation failed to decode path: operation missing path field: {MISSING}"
                )
            })?;
            let (con, key) = find(doc, path).ok_or_else(|| {
                format!("test operation does not apply: is missing path: {path}: {MISSING}")
            })?;
            let actual =
                get(con, &key).map_err(|e| format!("error in test for path: '{path}': {e}"))?;
            // A JSON null and a missing member are both a nil node upstream.
            let actual = actual.filter(|v| !v.is_null());
            let expected = op.get("value");
            let passed = match (actual, expected) {
                (None, Some(Value::Null)) => true,
                (Some(a), Some(e)) => a == e,
                _ => false,
            };
            if passed {
                Ok(())
            } else {
                Err(format!("testing value {path} failed: test failed"))
            }
        }
        other => Err(format!("Unexpected kind: {other}")),
    }
}

/// The container a pointer's last token lives in, and that token, unescaped. Like upstream, the
/// first segment is skipped unread, so a pointer must start with "/" to mean anything.
fn find<'a>(doc: &'a mut Value, path: &str) -> Option<(&'a mut Value, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 {
        return None;
    }
    let mut cur = doc;
    for part in &parts[1..parts.len() - 1] {
        let key = unescape(part);
        cur = match cur {
            Value::Object(m) => m.get_mut(&key)?,
            Value::Array(a) => {
                let idx = usize::try_from(atoi(&key).ok()?).ok()?;
                a.get_mut(idx)?
            }
            _ => return None,
        };
        if !cur.is_object() && !cur.is_array() {
            return None;
        }
    }
    Some((cur, unescape(parts[parts.len() - 1])))
}

fn unescape(token: &str) -> String {
    if token.contains('~') {
        token.replace("~1", "/").replace("~0", "~")
    } else {
        token.to_string()
    }
}

fn atoi(key: &str) -> Result<i64, String> {
    key.parse::<i64>()
        .map_err(|_| format!("strconv.Atoi: parsing \"{key}\": invalid syntax"))
}

fn invalid_index(idx: i64) -> String {
    format!("Unable to access invalid index: {idx}: {INVALID_INDEX}")
}

/// The index of an existing array element.
fn existing_index(a: &[Value], key: &str) -> Result<usize, String> {
    let idx = atoi(key)?;
    usize::try_from(idx)
        .ok()
        .filter(|&i| i < a.len())
        .ok_or_else(|| invalid_index(idx))
}

fn get<'a>(con: &'a Value, key: &str) -> Result<Option<&'a Value>, String> {
    match con {
        Value::Object(m) => Ok(m.get(key)),
        Value::Array(a) => existing_index(a, key).map(|i| Some(&a[i])),
        _ => Ok(None),
    }
}

fn add(con: &mut Value, key: &str, value: Value) -> Result<(), String> {
    match con {
        Value::Object(m) => {
            m.insert(key.to_string(), value);
            Ok(())
        }
        Value::Array(a) => {
            if key == "-" {
                a.push(value);
                return Ok(());
            }
            let idx = atoi(key)
                .map_err(|e| format!("value was not a proper array index: '{key}': {e}"))?;
            let len = a.len() as i64 + 1;
            if idx >= len || idx < -len {
                return Err(invalid_index(idx));
            }
            let at = if idx < 0 { idx + len } else { idx };
            a.insert(at as usize, value);
            Ok(())
        }
        _ => Err(MISSING.to_string()),
    }
}

fn remove(con: &mut Value, key: &str) -> Result<Value, String> {
    match con {
        Value::Object(m) => m
            .remove(key)
            .ok_or_else(|| format!("Unable to remove nonexistent key: {key}: {MISSING}")),
        Value::Array(a) => {
            let idx = atoi(key)?;
            let len = a.len() as i64;
            if idx >= len || idx < -len {
                return Err(invalid_index(idx));
            }
            let at = if idx < 0 { idx + len } else { idx };
            Ok(a.remove(at as usize))
        }
        _ => Err(MISSING.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applies_operations() {
        let cases = [
            (
                json!({"a": 1}),
                json!([{"op": "add", "path": "/b", "value": 2}]),
                json!({"a": 1, "b": 2}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "add", "path": "/a/-", "value": 3}]),
                json!({"a": [1, 2, 3]}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "add", "path": "/a/0", "value": 0}]),
                json!({"a": [0, 1, 2]}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "add", "path": "/a/-1", "value": 9}]),
                json!({"a": [1, 2, 9]}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "remove", "path": "/a/-1"}]),
                json!({"a": [1]}),
            ),
            (
                json!({"a/b": 1, "m~n": 2}),
                json!([{"op": "remove", "path": "/a~1b"}, {"op": "replace", "path": "/m~0n", "value": 3}]),
                json!({"m~n": 3}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "replace", "path": "/b", "value": 2}]),
                json!({"a": 1, "b": 2}),
            ),
            (
                json!({"a": {"b": 1}}),
                json!([{"op": "move", "from": "/a/b", "path": "/c"}]),
                json!({"a": {}, "c": 1}),
            ),
            (
                json!({"a": {"b": [1]}}),
                json!([{"op": "copy", "from": "/a/b", "path": "/c"}]),
                json!({"a": {"b": [1]}, "c": [1]}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "test", "path": "/a", "value": 1}, {"op": "test", "path": "/z", "value": null}]),
                json!({"a": 1}),
            ),
            (
                json!({"metadata": {"labels": {"x": "y"}}}),
                json!([{"op": "add", "path": "/metadata/labels/app", "value": "web"}]),
                json!({"metadata": {"labels": {"x": "y", "app": "web"}}}),
            ),
        ];
        for (doc, patch, want) in cases {
            let mut got = doc.clone();
            apply(&mut got, &patch).unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(got, want, "{patch}");
        }
    }

    #[test]
    fn failures_leave_the_document_alone() {
        let doc = json!({"a": 1, "l": [1]});
        let cases = [
            (json!([{"op": "add", "path": "/b", "value": 2}, {"op": "test", "path": "/a", "value": 2}]), PatchError::Invalid("testing value /a failed: test failed".into())),
            (json!([{"op": "remove", "path": "/nope"}]), PatchError::Invalid("error in remove for path: '/nope': Unable to remove nonexistent key: nope: missing value".into())),
            (json!([{"op": "add", "path": "/x/y", "value": 1}]), PatchError::Invalid("add operation does not apply: doc is missing path: \"/x/y\": missing value".into())),
            (json!([{"op": "add", "path": "/l/5", "value": 1}]), PatchError::Invalid("error in add for path: '/l/5': Unable to access invalid index: 5: invalid index referenced".into())),
            (json!([{"op": "replace", "path": "/l/3", "value": 1}]), PatchError::Invalid("replace operation does not apply: doc is missing key: /l/3: missing value".into())),
            (json!([{"op": "frob", "path": "/a"}]), PatchError::Invalid("Unexpected kind: frob".into())),
            (json!({"op": "add"}), PatchError::BadRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch".into())),
            (json!(["add"]), PatchError::BadRequest("json: cannot unmarshal string into Go value of type jsonpatch.Operation".into())),
        ];
        for (patch, want) in cases {
            let mut got = doc.clone();
            assert_eq!(apply(&mut got, &patch), Err(want), "{patch}");
            assert_eq!(got, doc, "{patch}");
        }
    }
}
