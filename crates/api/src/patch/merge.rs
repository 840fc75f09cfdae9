//! RFC 7386 JSON merge patch, as evanphx/json-patch's `MergePatch` (what kube-apiserver runs)
//! implements it: nulls delete, objects merge recursively, anything else replaces, and nulls
//! inside newly added objects are dropped.

use serde_json::{Map, Value};

/// The result of merging `patch` into `doc`. A patch that is not an object replaces `doc`.
pub fn apply(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    merge_into(&mut out, patch);
    out
}

fn merge_into(cur: &mut Value, patch: &Value) {
    match (cur, patch) {
        (Value::Object(doc), Value::Object(patch)) => merge_maps(doc, patch),
        (cur @ Value::Object(_), patch) => *cur = patch.clone(),
        (cur, patch) => *cur = pruned(patch),
    }
}

fn merge_maps(doc: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            doc.remove(k);
            continue;
        }
        match doc.get_mut(k) {
            Some(cur) if !cur.is_null() => merge_into(cur, v),
            _ => {
                doc.insert(k.clone(), pruned(v));
            }
        }
    }
}

/// `v` without null object members at any depth; nulls directly inside arrays stay.
fn pruned(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), pruned(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(pruned).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({"a": 1}),
                json!({"a": [{"x": null}, null]}),
                json!({"a": [{}, null]}),
            ),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
                json!({"metadata": {"labels": {"b": "2", "c": "3"}}}),
            ),
        ];
        for (doc, patch, want) in cases {
            assert_eq!(apply(&doc, &patch), want, "{doc} + {patch}");
        }
    }
}
