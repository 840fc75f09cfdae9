//! Kubernetes strategic merge patch, following apimachinery's `strategicpatch` as the server runs
//! it (`MergeParallelList` and `IgnoreUnmatchedNulls` on): lists with `patchStrategy: merge`
//! merge by `patchMergeKey` (or as a set for primitives), other lists are replaced, maps merge
//! recursively, `null` deletes, and the `$patch`, `$retainKeys`, `$setElementOrder/<field>` and
//! `$deleteFromPrimitiveList/<field>` directives apply.
//!
//! Where upstream would decode the result into a typed Go struct, nulls and leftover directives
//! in newly added values are dropped here instead, since objects stay JSON.

use super::PatchError;
use crate::schema::SchemaRef;
use serde_json::{Map, Value};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Applies the strategic merge `patch` to `original`. `schema` supplies patch strategies and merge
/// keys; without it (or below a field it does not know) the patch behaves like a JSON merge patch.
pub fn apply(
    original: &Value,
    patch: &Value,
    schema: Option<SchemaRef<'_>>,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_kind(patch)
        )));
    };
    let original = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    merge_map(original, patch.clone(), schema).map(Value::Object)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Merge,
    Replace,
    Default,
}

fn strategy(schema: Option<SchemaRef<'_>>) -> Strategy {
    match schema {
        Some(s) if s.has_patch_strategy("merge") => Strategy::Merge,
        Some(s) if s.has_patch_strategy("replace") => Strategy::Replace,
        _ => Strategy::Default,
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Option<SchemaRef<'_>>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(clean_map(patch))
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad_patch_type(directive, &patch)),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_ordered_lists(&mut original, &mut patch, schema)?;

    for (key, patch_value) in patch {
        let (key, delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(_) => (extract_key(&key, DELETE_FROM_PRIMITIVE_LIST)?, true),
            None => (key, false),
        };
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let Some(current) = original.get_mut(&key) else {
            if !delete_list && let Some(v) = clean(patch_value) {
                original.insert(key, v);
            }
            continue;
        };
        let field = schema.and_then(|s| s.field(&key));
        match (current, patch_value) {
            (Value::Object(cur), Value::Object(p)) => {
                let merged = if strategy(field) == Strategy::Replace {
                    clean_map(p)
                } else {
                    merge_map(std::mem::take(cur), p, field)?
                };
                original.insert(key, Value::Object(merged));
            }
            (Value::Array(cur), Value::Array(p)) => {
                let merged = merge_list(std::mem::take(cur), p, field, delete_list)?;
                original.insert(key, Value::Array(merged));
            }
            (_, p) if delete_list && (p.is_object() || p.is_array()) => {}
            (_, p) => match clean(p) {
                Some(v) => {
                    original.insert(key, v);
                }
                None => {
                    original.remove(&key);
                }
            },
        }
    }
    Ok(original)
}

/// `$retainKeys`: drop original fields the list does not name, after checking the patch only sets
/// fields it names.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let bad = || PatchError::BadRequest("invalid patch format of retainKeys".into());
    let Value::Array(retain) = retain else {
        return Err(bad());
    };
    let retained = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !retained(k) {
            return Err(bad());
        }
    }
    original.retain(|k, _| retained(k));
    Ok(())
}

/// `$setElementOrder/<field>`: merge the named list and then order it as the directive says,
/// keeping server-only items near their original neighbours.
fn merge_ordered_lists(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Option<SchemaRef<'_>>,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in keys {
        let order = match patch.remove(&key) {
            Some(Value::Array(order)) => order,
            other => return Err(bad_arg_type("slice", other.as_ref())),
        };
        let field_key = extract_key(&key, SET_ELEMENT_ORDER)?;
        let original_list = match original.remove(&field_key) {
            Some(Value::Array(l)) => Some(l),
            Some(other) => return Err(bad_arg_type("slice", Some(&other))),
            None => None,
        };
        let patch_list = match patch.remove(&field_key) {
            Some(Value::Array(l)) => Some(l),
            Some(other) => return Err(bad_arg_type("slice", Some(&other))),
            None => None,
        };
        if original_list.is_none() && patch_list.is_none() {
            continue;
        }
        let field = schema.and_then(|s| s.field(&field_key));
        let merge_key = field.and_then(|f| f.patch_merge_key()).unwrap_or("");
        validate_order(patch_list.as_deref().unwrap_or_default(), &order, merge_key)?;
        let is_map = element_is_map(&[
            original_list.as_deref().unwrap_or_default(),
            patch_list.as_deref().unwrap_or_default(),
        ])?;
        let server_order = match &original_list {
            Some(l) => identities(l, merge_key, is_map)?,
            None => Vec::new(),
        };
        let merged = match (original_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => p.into_iter().filter_map(remove_directives).collect(),
            (Some(o), Some(p)) => merge_list(o, p, field, false)?,
            (None, None) => Vec::new(),
        };
        let order_ids = identities(&order, merge_key, is_map)?;
        let (in_order, server_only) = partition(merged, &order_ids, merge_key, is_map)?;
        let sorted = normalize_order(
            in_order,
            server_only,
            &order_ids,
            &server_order,
            merge_key,
            is_map,
        )?;
        original.insert(field_key, Value::Array(sorted));
    }
    Ok(())
}

/// Checks that the patch list's items appear in the `$setElementOrder` list in the same order.
fn validate_order(
    patch_list: &[Value],
    order: &[Value],
    merge_key: &str,
) -> Result<(), PatchError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let kept: Vec<&Value> = if merge_key.is_empty() {
        patch_list.iter().collect()
    } else {
        let mut kept = Vec::new();
        for v in patch_list {
            let Value::Object(m) = v else {
                return Err(bad_arg_type("map", Some(v)));
            };
            if m.get(DIRECTIVE).and_then(Value::as_str) != Some("delete") {
                kept.push(v);
            }
        }
        kept
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < kept.len() && oi < order.len() {
        if kept[pi].get(DIRECTIVE).is_some() && kept[pi].is_object() {
            pi += 1;
            continue;
        }
        if identity(kept[pi], merge_key)? == identity(&order[oi], merge_key)? {
            pi += 1;
        }
        oi += 1;
    }
    if pi < kept.len() && oi >= order.len() {
        return Err(PatchError::Internal(format!(
            "the order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}",
            go_fmt_list(patch_list),
            go_fmt_list(order)
        )));
    }
    Ok(())
}

fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    field: Option<SchemaRef<'_>>,
    delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if strategy(field) != Strategy::Merge && !delete_list {
        return Ok(patch.into_iter().filter_map(clean).collect());
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let is_map = element_is_map(&[&original, &patch])?;
    let merge_key = field.and_then(|f| f.patch_merge_key()).unwrap_or("");
    if !is_map {
        if delete_list {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.contains(v))
                .collect());
        }
        let server_order = original.clone();
        let mut merged = original;
        for v in &patch {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, "", false)?;
        return normalize_order(in_patch, server_only, &patch, &server_order, "", false);
    }
    if merge_key.is_empty() {
        return Err(PatchError::Internal(
            "cannot merge lists without merge key for type map".into(),
        ));
    }
    let (original, patch) = apply_list_directives(original, patch, merge_key)?;
    let server_order = identities(&original, merge_key, true)?;
    let patch_order = identities(&patch, merge_key, true)?;
    let item_schema = field.and_then(|f| f.items());
    let mut merged = original;
    for item in patch {
        let Value::Object(item) = item else {
            return Err(bad_arg_type("map", Some(&item)));
        };
        let Some(key_value) = item.get(merge_key) else {
            return Err(no_merge_key(&item, merge_key));
        };
        match find_by_key(&merged, merge_key, key_value)? {
            Some(i) => {
                let current = match std::mem::take(&mut merged[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                merged[i] = Value::Object(merge_map(current, item, item_schema)?);
            }
            None => merged.push(Value::Object(clean_map(item))),
        }
    }
    let (in_patch, server_only) = partition(merged, &patch_order, merge_key, true)?;
    normalize_order(
        in_patch,
        server_only,
        &patch_order,
        &server_order,
        merge_key,
        true,
    )
}

/// Handles `{"$patch": "delete", <key>: ...}` and `{"$patch": "replace"}` list elements: returns
/// the original list to merge into and the patch items left to merge.
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(key_value) = item.get(merge_key) else {
                    return Err(no_merge_key(
                        item.as_object().unwrap_or(&Map::new()),
                        merge_key,
                    ));
                };
                while let Some(i) = find_by_key(&original, merge_key, key_value)? {
                    original.remove(i);
                }
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(PatchError::Internal(
                    "merging lists cannot yet be specified in the patch".into(),
                ));
            }
            _ => {
                return Err(bad_patch_type(
                    directive,
                    item.as_object().unwrap_or(&Map::new()),
                ));
            }
        }
    }
    if replace {
        return Ok((plain.into_iter().filter_map(clean).collect(), Vec::new()));
    }
    Ok((original, plain))
}

fn find_by_key(
    list: &[Value],
    merge_key: &str,
    key_value: &Value,
) -> Result<Option<usize>, PatchError> {
    for (i, v) in list.iter().enumerate() {
        let Value::Object(m) = v else {
            return Err(PatchError::Internal(format!(
                "value for key {i} is not a map"
            )));
        };
        if m.get(merge_key) == Some(key_value) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Whether list elements are maps, erroring like upstream on lists of lists, mixed element types
/// and lists with no elements at all.
fn element_is_map(lists: &[&[Value]]) -> Result<bool, PatchError> {
    let mut kind: Option<&'static str> = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        let k = go_kind(v);
        match kind {
            None if k == "slice" => {
                return Err(PatchError::Invalid(
                    "lists of lists are not supported".into(),
                ));
            }
            None => kind = Some(k),
            Some(prev) if prev != k => {
                let all: Vec<String> = lists.iter().map(|l| go_fmt_list(l)).collect();
                return Err(PatchError::Internal(format!(
                    "list element types are not identical: [{}]",
                    all.join(" ")
                )));
            }
            Some(_) => {}
        }
    }
    match kind {
        Some(k) => Ok(k == "map"),
        None => Err(PatchError::Internal(
            "no elements in any of the given slices".into(),
        )),
    }
}

/// What identifies a list element: its merge key value for maps, itself for primitives.
fn identity(v: &Value, merge_key: &str) -> Result<Value, PatchError> {
    if merge_key.is_empty() {
        return Ok(v.clone());
    }
    let Value::Object(m) = v else {
        return Err(bad_arg_type("map", Some(v)));
    };
    m.get(merge_key)
        .cloned()
        .ok_or_else(|| no_merge_key(m, merge_key))
}

fn identities(list: &[Value], merge_key: &str, is_map: bool) -> Result<Vec<Value>, PatchError> {
    let key = if is_map { merge_key } else { "" };
    list.iter().map(|v| identity(v, key)).collect()
}

/// Splits `items` into those whose identity is in `by` and the rest, keeping order.
fn partition(
    items: Vec<Value>,
    by: &[Value],
    merge_key: &str,
    is_map: bool,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let key = if is_map { merge_key } else { "" };
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for v in items {
        if by.contains(&identity(&v, key)?) {
            inside.push(v);
        } else {
            outside.push(v);
        }
    }
    Ok((inside, outside))
}

/// Sorts patch items by `patch_order` and server-only items by `server_order`, then interleaves
/// them, preferring the server's relative order where both sides know the items.
fn normalize_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    is_map: bool,
) -> Result<Vec<Value>, PatchError> {
    let key = if is_map { merge_key } else { "" };
    let patch_items = sort_by_order(patch_items, patch_order, key, is_map)?;
    let server_only = sort_by_order(server_only, server_order, key, is_map)?;
    let position = |v: &Value| -> Result<Option<usize>, PatchError> {
        let id = identity(v, key)?;
        Ok(server_order.iter().position(|o| *o == id))
    };
    let left: Vec<(Option<usize>, Value)> = server_only
        .into_iter()
        .map(|v| Ok((position(&v)?, v)))
        .collect::<Result<_, PatchError>>()?;
    let right: Vec<(Option<usize>, Value)> = patch_items
        .into_iter()
        .map(|v| Ok((position(&v)?, v)))
        .collect::<Result<_, PatchError>>()?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((Some(l), _)), Some((Some(r), _))) => l < r,
            (Some(_), Some(_)) => false,
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next.map(|(_, v)| v));
    }
    Ok(out)
}

/// Stable sort by position in `order`, deletion directives last. Items missing from `order` get
/// upstream's comparator (they sort as "less" than anything), replayed as the insertion sort Go
/// uses for short lists.
fn sort_by_order(
    items: Vec<Value>,
    order: &[Value],
    key: &str,
    is_map: bool,
) -> Result<Vec<Value>, PatchError> {
    let (mut keep, mut delete) = (Vec::with_capacity(items.len()), Vec::new());
    for v in items {
        let pos = order
            .iter()
            .position(|o| identity(&v, key).is_ok_and(|id| *o == id));
        if is_map {
            identity(&v, key)?;
            if v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                delete.push(v);
                continue;
            }
        }
        keep.push((pos, v));
    }
    if keep.iter().all(|(p, _)| p.is_some()) {
        keep.sort_by_key(|(p, _)| *p);
    } else {
        let less = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        };
        for i in 1..keep.len() {
            let mut j = i;
            while j > 0 && less(keep[j].0, keep[j - 1].0) {
                keep.swap(j, j - 1);
                j -= 1;
            }
        }
    }
    Ok(keep.into_iter().map(|(_, v)| v).chain(delete).collect())
}

/// The field a `$directive/<field>` key names.
fn extract_key(key: &str, prefix: &str) -> Result<String, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest.to_string()),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST => Err(PatchError::BadRequest(
            "invalid patch format of primitive list".into(),
        )),
        _ => Err(PatchError::BadRequest(
            "invalid patch format of setElementOrder list".into(),
        )),
    }
}

/// A patch value as it ends up in the object: nulls dropped, directive maps and keys removed.
/// `None` when the value itself is a directive.
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) if m.contains_key(DIRECTIVE) => None,
        Value::Object(m) => Some(Value::Object(clean_map(m))),
        Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(clean).collect())),
        other => Some(other),
    }
}

fn clean_map(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
        .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
        .collect()
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(SET_ELEMENT_ORDER)
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// What upstream's `removeDirectives` does to values it copies from the patch: drop maps that are
/// `$patch` directives.
fn remove_directives(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) if m.contains_key(DIRECTIVE) => None,
        Value::Object(m) => Some(Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                .collect(),
        )),
        Value::Array(a) => Some(Value::Array(
            a.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

fn bad_patch_type(directive: &Value, m: &Map<String, Value>) -> PatchError {
    PatchError::Internal(format!(
        "unknown patch type: {} in map: {}",
        go_fmt(directive),
        go_fmt_map(m)
    ))
}

fn bad_arg_type(expected: &str, actual: Option<&Value>) -> PatchError {
    let actual = actual.map_or("invalid", go_kind);
    PatchError::Internal(format!("expected a {expected}, but received a {actual}"))
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    PatchError::Internal(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt_map(m)
    ))
}

/// The Go reflect kind name of a decoded JSON value, as upstream error texts print it.
fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "invalid",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "slice",
        Value::Object(_) => "map",
    }
}

/// Go's `%v` rendering of a decoded JSON value.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => go_fmt_list(a),
        Value::Object(m) => go_fmt_map(m),
        other => other.to_string(),
    }
}

fn go_fmt_list(a: &[Value]) -> String {
    let items: Vec<String> = a.iter().map(go_fmt).collect();
    format!("[{}]", items.join(" "))
}

fn go_fmt_map(m: &Map<String, Value>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}:{}", go_fmt(v)))
        .collect();
    format!("map[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ListType, Node, Schemas, Type};
    use serde_json::json;
    use std::collections::BTreeMap;

    /// A Deployment-shaped schema: containers merge by name, their ports by containerPort,
    /// finalizers and args are primitive lists (the first merging), volumes retain keys.
    fn schemas() -> Schemas {
        let mut s = Schemas::default();
        let leaf = s.add(Node {
            ty: Type::String,
            ..Node::default()
        });
        let strings = s.add(Node {
            ty: Type::Array,
            items: Some(leaf),
            ..Node::default()
        });
        let string_map = s.add(Node {
            ty: Type::Object,
            additional_properties: Some(leaf),
            ..Node::default()
        });
        let port = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([("containerPort".into(), leaf), ("protocol".into(), leaf)]),
            ..Node::default()
        });
        let ports = s.add(Node {
            ty: Type::Array,
            items: Some(port),
            patch_strategy: Some("merge".into()),
            patch_merge_key: Some("containerPort".into()),
            list_type: Some(ListType::Map(vec![
                "containerPort".into(),
                "protocol".into(),
            ])),
            ..Node::default()
        });
        let container = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([
                ("name".into(), leaf),
                ("image".into(), leaf),
                ("args".into(), strings),
                ("ports".into(), ports),
            ]),
            ..Node::default()
        });
        let containers = s.add(Node {
            ty: Type::Array,
            items: Some(container),
            patch_strategy: Some("merge".into()),
            patch_merge_key: Some("name".into()),
            list_type: Some(ListType::Map(vec!["name".into()])),
            ..Node::default()
        });
        let source = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([("path".into(), leaf)]),
            ..Node::default()
        });
        let volume = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([
                ("name".into(), leaf),
                ("hostPath".into(), source),
                ("emptyDir".into(), source),
            ]),
            patch_strategy: Some("retainKeys".into()),
            ..Node::default()
        });
        let volumes = s.add(Node {
            ty: Type::Array,
            items: Some(volume),
            patch_strategy: Some("merge,retainKeys".into()),
            patch_merge_key: Some("name".into()),
            ..Node::default()
        });
        let pod_spec = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([
                ("containers".into(), containers),
                ("volumes".into(), volumes),
            ]),
            ..Node::default()
        });
        let template = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([("spec".into(), pod_spec)]),
            ..Node::default()
        });
        let finalizers = s.add(Node {
            ty: Type::Array,
            items: Some(leaf),
            patch_strategy: Some("merge".into()),
            ..Node::default()
        });
        let meta = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([
                ("labels".into(), string_map),
                ("finalizers".into(), finalizers),
                ("name".into(), leaf),
            ]),
            ..Node::default()
        });
        let spec = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([("template".into(), template), ("replicas".into(), leaf)]),
            ..Node::default()
        });
        let root = s.add(Node {
            ty: Type::Object,
            properties: BTreeMap::from([("metadata".into(), meta), ("spec".into(), spec)]),
            ..Node::default()
        });
        s.roots.insert("apps/v1/Deployment".into(), root);
        s
    }

    fn deployment(containers: Value) -> Value {
        json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn merges() {
        let s = schemas();
        let schema = s.root("apps", "v1", "Deployment");
        let cases = [
            // kubectl apply: update the image of one container by name.
            (
                deployment(json!([{"name": "nginx", "image": "nginx:1.1", "args": ["a"]}])),
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "nginx"}], "containers": [{"image": "nginx:1.2", "name": "nginx"}]}}}}),
                deployment(json!([{"name": "nginx", "image": "nginx:1.2", "args": ["a"]}])),
            ),
            // A new container is appended; the order directive puts it first.
            (
                deployment(json!([{"name": "a", "image": "a"}])),
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "b", "image": "b"}]}}}}),
                deployment(json!([{"name": "b", "image": "b"}, {"name": "a", "image": "a"}])),
            ),
            // Without the directive, items the server cannot place come first (upstream's
            // mergeSortedSlice takes the patch item when the two cannot be compared).
            (
                deployment(json!([{"name": "a", "image": "a"}])),
                json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b"}]}}}}),
                deployment(json!([{"name": "b", "image": "b"}, {"name": "a", "image": "a"}])),
            ),
            // Delete by merge key.
            (
                deployment(json!([{"name": "a"}, {"name": "b"}])),
                json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete", "name": "a"}]}}}}),
                deployment(json!([{"name": "b"}])),
            ),
            // Replace the whole list.
            (
                deployment(json!([{"name": "a"}, {"name": "b"}])),
                json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}}}}),
                deployment(json!([{"name": "c"}])),
            ),
            // Lists without a merge strategy are replaced; null deletes a field.
            (
                deployment(json!([{"name": "a", "args": ["x", "y"], "image": "i"}])),
                json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["z"], "image": null}]}}}}),
                deployment(json!([{"name": "a", "args": ["z"]}])),
            ),
            // Nested merge: ports by containerPort inside containers by name.
            (
                deployment(
                    json!([{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]),
                ),
                json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 443}]}]}}}}),
                deployment(
                    json!([{"name": "a", "ports": [{"containerPort": 443}, {"containerPort": 80, "protocol": "TCP"}]}]),
                ),
            ),
            // $patch: replace on a map, and $patch: delete on a map.
            (
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}}),
                json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}, "spec": {"$patch": "delete"}}),
                json!({"metadata": {"labels": {"c": "3"}}, "spec": {}}),
            ),
            // Primitive merge list: union; $deleteFromPrimitiveList removes.
            (
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"]}}),
            ),
            (
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$setElementOrder/finalizers": ["b", "a", "c"], "finalizers": ["c"]}}),
                json!({"metadata": {"finalizers": ["b", "a", "c"]}}),
            ),
            // $retainKeys drops the other union member.
            (
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/x"}}]}}}}),
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}, "$retainKeys": ["emptyDir", "name"]}]}}}}),
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}}}),
            ),
            // New values lose their nulls and directives.
            (
                json!({"metadata": {"name": "d"}}),
                json!({"metadata": {"labels": {"a": "1", "b": null}}, "spec": {"template": {"spec": {"containers": [{"name": "x", "image": null}]}}}}),
                json!({"metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}}),
            ),
        ];
        for (original, patch, want) in cases {
            let got = apply(&original, &patch, schema).unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(got, want, "{patch}");
        }
    }

    #[test]
    fn without_schema_behaves_like_merge_patch() {
        let original = json!({"spec": {"list": [1, 2], "m": {"a": 1, "b": 2}}});
        let patch = json!({"spec": {"list": [3], "m": {"a": null, "c": 3}}});
        let got = apply(&original, &patch, None).unwrap();
        assert_eq!(got, json!({"spec": {"list": [3], "m": {"b": 2, "c": 3}}}));
    }

    #[test]
    fn errors() {
        let s = schemas();
        let schema = s.root("apps", "v1", "Deployment");
        let base = deployment(json!([{"name": "a"}]));
        let cases = [
            (json!([1]), PatchError::BadRequest("json: cannot unmarshal slice into Go value of type map[string]interface {}".into())),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
                PatchError::Internal("map: map[image:x] does not contain declared merge key: name".into()),
            ),
            (json!({"spec": {"$patch": "frob"}}), PatchError::Internal("unknown patch type: frob in map: map[$patch:frob]".into())),
            (
                json!({"metadata": {"labels": {"a": "1"}, "$retainKeys": ["name"]}}),
                PatchError::BadRequest("invalid patch format of retainKeys".into()),
            ),
            (
                json!({"metadata": {"finalizers": [["x"]]}}),
                PatchError::Internal("list element types are not identical: [[f] [[x]]]".into()),
            ),
            (
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b"}]}}}}),
                PatchError::Internal("the order in patch list:\n[map[name:b]]\n doesn't match $setElementOrder list:\n[map[name:a]]".into()),
            ),
        ];
        let base = {
            let mut b = base;
            b["metadata"]["finalizers"] = json!(["f"]);
            b
        };
        for (patch, want) in cases {
            assert_eq!(apply(&base, &patch, schema), Err(want), "{patch}");
        }
    }
}
