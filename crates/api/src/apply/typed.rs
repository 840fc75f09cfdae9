//! structured-merge-diff's typed operations on JSON values: the field set an object sets, the
//! comparison of two objects, the apply merge and the removal of paths. Lists are atomic unless
//! the schema says `x-kubernetes-list-type` set/map (or, like kube-openapi's conversion, has a
//! `merge` patch strategy); maps are granular unless `x-kubernetes-map-type: atomic`; anything
//! the schema does not describe is "deduced": granular maps, atomic lists.

use super::fieldpath::{PathElement, Set, path_string};
use crate::schema::{ListType, SchemaRef};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

type Schema<'a> = Option<SchemaRef<'a>>;

fn list_type(s: Schema<'_>) -> ListType {
    let Some(s) = s else {
        return ListType::Atomic;
    };
    if let Some(lt) = &s.node().list_type {
        return lt.clone();
    }
    if s.has_patch_strategy("merge") {
        return match s.patch_merge_key() {
            Some(k) => ListType::Map(vec![k.to_string()]),
            None => ListType::Set,
        };
    }
    ListType::Atomic
}

fn map_atomic(s: Schema<'_>) -> bool {
    s.is_some_and(|s| s.node().map_atomic)
}

/// Whether `key` is a declared struct field (not a map key).
pub fn is_named(s: Schema<'_>, key: &str) -> bool {
    s.is_some_and(|s| s.node().properties.contains_key(key))
}

pub fn field<'a>(s: Schema<'a>, key: &str) -> Schema<'a> {
    s.and_then(|s| s.field(key))
}

fn items(s: Schema<'_>) -> Schema<'_> {
    s.and_then(|s| s.items())
}

/// The schema below a path element.
fn below<'a>(s: Schema<'a>, pe: &PathElement) -> Schema<'a> {
    match pe {
        PathElement::Field(k) => field(s, k),
        _ => items(s),
    }
}

/// A key field's default when an item omits it. Upstream reads OpenAPI defaults; the only list-map
/// key with one among built-in kinds is `protocol` (ports), defaulting to TCP.
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// The path element naming item `index` of a non-atomic list.
fn item_element(item: &Value, index: usize, lt: &ListType) -> Result<PathElement, String> {
    match lt {
        ListType::Atomic => Ok(PathElement::Index(index)),
        ListType::Set => match item {
            Value::Object(_) => Err(format!(
                "element {index}: associative list without keys has an element that's a map type"
            )),
            Value::Array(_) => Err(format!(
                "element {index}: associative list without keys has an element that's a list type"
            )),
            v => Ok(PathElement::Value(v.clone())),
        },
        ListType::Map(keys) => {
            let Value::Object(m) = item else {
                return Err(format!(
                    "element {index}: associative list with keys may only have map elements"
                ));
            };
            let mut fields = Vec::with_capacity(keys.len());
            for k in keys {
                let v = m.get(k).cloned().or_else(|| key_default(k)).ok_or_else(|| {
                    format!("element {index}: associative list with keys has an element that omits key field {k:?} (and doesn't have default value)")
                })?;
                fields.push((k.clone(), v));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(PathElement::Key(fields))
        }
    }
}

/// The items of a list by path element, first occurrence winning, in list order.
fn index_items<'v>(
    list: &'v [Value],
    lt: &ListType,
) -> Result<Vec<(PathElement, &'v Value)>, String> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let pe = item_element(item, i, lt)?;
        if seen.insert(pe.clone(), ()).is_none() {
            out.push((pe, item));
        }
    }
    Ok(out)
}

fn prefixed(pe: &PathElement, e: String) -> String {
    if e.starts_with('.') || e.starts_with('[') {
        format!("{pe}{e}")
    } else {
        format!("{pe}: {e}")
    }
}

/// The fields `v` sets (structured-merge-diff's `ToFieldSet`): leaves, list items, map keys that
/// are not struct fields, and null or empty-map values.
pub fn field_set(v: &Value, s: Schema<'_>) -> Result<Set, String> {
    to_set(v, s).map(|(_, set)| set)
}

/// Whether `v` is itself a member of its parent's set, and the set below it.
fn to_set(v: &Value, s: Schema<'_>) -> Result<(bool, Set), String> {
    let mut set = Set::default();
    match v {
        Value::Object(m) if !map_atomic(s) => {
            for (k, c) in m {
                let pe = PathElement::Field(k.clone());
                let (member, sub) = to_set(c, field(s, k)).map_err(|e| prefixed(&pe, e))?;
                let empty_map = c.as_object().is_some_and(Map::is_empty);
                if member || c.is_null() || empty_map || !is_named(s, k) {
                    set.members.insert(pe.clone());
                }
                set.insert_child(pe, sub);
            }
            Ok((false, set))
        }
        Value::Array(list) => {
            let lt = list_type(s);
            if lt == ListType::Atomic {
                return Ok((true, set));
            }
            for (i, item) in list.iter().enumerate() {
                let pe = item_element(item, i, &lt)?;
                let (_, sub) = to_set(item, items(s)).map_err(|e| prefixed(&pe, e))?;
                set.members.insert(pe.clone());
                set.insert_child(pe, sub);
            }
            Ok((false, set))
        }
        _ => Ok((true, set)),
    }
}

/// Adds every declared struct field that has children as a member, so removing it removes the
/// (then empty) struct too.
pub fn ensure_named_fields(set: &Set, s: Schema<'_>) -> Set {
    let mut out = Set {
        members: set.members.clone(),
        children: BTreeMap::new(),
    };
    for (pe, child) in &set.children {
        if let PathElement::Field(k) = pe
            && is_named(s, k)
        {
            out.members.insert(pe.clone());
        }
        out.insert_child(pe.clone(), ensure_named_fields(child, below(s, pe)));
    }
    out
}

/// What changed between two versions of an object, leaf by leaf (plus whole subtrees that
/// appeared or disappeared).
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    /// Forgets changes at or below any of `prefixes`.
    pub fn exclude(&mut self, prefixes: &[Vec<PathElement>]) {
        for p in prefixes {
            self.added.remove_prefix(p);
            self.modified.remove_prefix(p);
            self.removed.remove_prefix(p);
        }
    }
}

pub fn compare(old: &Value, new: &Value, s: Schema<'_>) -> Result<Comparison, String> {
    let mut out = Comparison::default();
    cmp(Some(old), Some(new), s, &mut Vec::new(), &mut out)?;
    Ok(out)
}

#[derive(PartialEq)]
enum Shape {
    Map,
    List,
    Scalar,
    Mixed,
}

fn shape(l: Option<&Value>, r: Option<&Value>) -> Shape {
    let of = |v: Option<&Value>| match v {
        Some(Value::Object(_)) => Some(Shape::Map),
        Some(Value::Array(_)) => Some(Shape::List),
        Some(Value::Null) | None => None,
        Some(_) => Some(Shape::Scalar),
    };
    match (of(l), of(r)) {
        (Some(a), Some(b)) if a != b => Shape::Mixed,
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => Shape::Scalar,
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

fn cmp(
    l: Option<&Value>,
    r: Option<&Value>,
    s: Schema<'_>,
    path: &mut Vec<PathElement>,
    out: &mut Comparison,
) -> Result<(), String> {
    let leaf = |out: &mut Comparison, path: &[PathElement]| match (l, r) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if a != b => out.modified.insert(path),
        _ => {}
    };
    let both_empty = is_empty(l) && is_empty(r);
    match shape(l, r) {
        Shape::Map if !map_atomic(s) && !both_empty => {
            let empty = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty);
            let rm = r.and_then(Value::as_object).unwrap_or(&empty);
            let keys: std::collections::BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
            for k in keys {
                path.push(PathElement::Field(k.clone()));
                let res = cmp(lm.get(k), rm.get(k), field(s, k), path, out);
                path.pop();
                res?;
            }
        }
        Shape::List if list_type(s) != ListType::Atomic && !both_empty => {
            let lt = list_type(s);
            let no_items: &[Value] = &[];
            let li = index_items(
                l.and_then(Value::as_array).map_or(no_items, Vec::as_slice),
                &lt,
            )
            .map_err(|e| format!("{}: {e}", path_string(path)))?;
            let ri = index_items(
                r.and_then(Value::as_array).map_or(no_items, Vec::as_slice),
                &lt,
            )
            .map_err(|e| format!("{}: {e}", path_string(path)))?;
            let lmap: BTreeMap<&PathElement, &Value> = li.iter().map(|(pe, v)| (pe, *v)).collect();
            let rmap: BTreeMap<&PathElement, &Value> = ri.iter().map(|(pe, v)| (pe, *v)).collect();
            for (pe, rv) in &ri {
                path.push(pe.clone());
                let res = cmp(lmap.get(pe).copied(), Some(rv), items(s), path, out);
                path.pop();
                res?;
            }
            for (pe, lv) in &li {
                if rmap.contains_key(pe) {
                    continue;
                }
                path.push(pe.clone());
                let res = cmp(Some(lv), None, items(s), path, out);
                path.pop();
                res?;
            }
        }
        _ => {
            leaf(out, path);
            return Ok(());
        }
    }
    // A granular map or list that appeared or disappeared is itself added or removed.
    if !path.is_empty() {
        match (l, r) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            _ => {}
        }
    }
    Ok(())
}

/// The apply merge: `r` wins on leaves, maps merge key by key, non-atomic lists merge item by
/// item keeping `l`-only items where they were and `r`'s order for the rest.
pub fn merge(l: Option<&Value>, r: Option<&Value>, s: Schema<'_>) -> Result<Option<Value>, String> {
    let both_empty = is_empty(l) && is_empty(r);
    match shape(l, r) {
        Shape::Map if !map_atomic(s) && !both_empty => {
            let empty = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty);
            let rm = r.and_then(Value::as_object).unwrap_or(&empty);
            let mut out = Map::new();
            for k in lm.keys().chain(rm.keys()) {
                if out.contains_key(k) {
                    continue;
                }
                let pe = PathElement::Field(k.clone());
                if let Some(v) =
                    merge(lm.get(k), rm.get(k), field(s, k)).map_err(|e| prefixed(&pe, e))?
                {
                    out.insert(k.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        Shape::List if list_type(s) != ListType::Atomic && !both_empty => {
            let lt = list_type(s);
            let no_items: &[Value] = &[];
            let li = index_items(
                l.and_then(Value::as_array).map_or(no_items, Vec::as_slice),
                &lt,
            )?;
            let ri = index_items(
                r.and_then(Value::as_array).map_or(no_items, Vec::as_slice),
                &lt,
            )?;
            merge_items(&li, &ri, items(s)).map(|v| Some(Value::Array(v)))
        }
        _ => Ok(r.or(l).cloned()),
    }
}

/// structured-merge-diff's list merge order: walk both lists; items only in `l` stay in place,
/// shared items follow `r`'s order.
fn merge_items(
    li: &[(PathElement, &Value)],
    ri: &[(PathElement, &Value)],
    item_schema: Schema<'_>,
) -> Result<Vec<Value>, String> {
    let lmap: BTreeMap<&PathElement, &Value> = li.iter().map(|(pe, v)| (pe, *v)).collect();
    let rmap: BTreeMap<&PathElement, &Value> = ri.iter().map(|(pe, v)| (pe, *v)).collect();
    let mut shared = ri
        .iter()
        .map(|(pe, _)| pe)
        .filter(|pe| lmap.contains_key(pe));
    let mut next_shared = shared.next();
    let mut done: BTreeMap<&PathElement, ()> = BTreeMap::new();
    let mut out = Vec::with_capacity(li.len().max(ri.len()));
    let (mut i, mut j) = (0, 0);
    let push = |pe: &PathElement, l: Option<&Value>, r: Option<&Value>, out: &mut Vec<Value>| {
        merge(l, r, item_schema)
            .map(|v| out.extend(v))
            .map_err(|e| prefixed(pe, e))
    };
    while i < li.len() || j < ri.len() {
        if i < li.len() && j < ri.len() {
            let pe = &li[i].0;
            if *pe == ri[j].0 {
                push(pe, Some(li[i].1), Some(ri[j].1), &mut out)?;
                done.insert(pe, ());
                i += 1;
                j += 1;
                next_shared = shared.next();
                continue;
            }
            if rmap.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                i += 1;
                continue;
            }
        }
        if i < li.len() {
            let pe = &li[i].0;
            if !rmap.contains_key(pe) {
                push(pe, Some(li[i].1), None, &mut out)?;
                i += 1;
                continue;
            }
            if done.contains_key(pe) {
                i += 1;
                continue;
            }
        }
        if j < ri.len() {
            let pe = &ri[j].0;
            push(pe, lmap.get(pe).copied(), Some(ri[j].1), &mut out)?;
            done.insert(pe, ());
            j += 1;
            if next_shared == Some(pe) {
                next_shared = shared.next();
            }
        }
    }
    Ok(out)
}

/// Removes the paths of `set` (with everything below them) from `v`.
pub fn remove_items(v: &mut Value, set: &Set, s: Schema<'_>) {
    match v {
        Value::Object(m) if !map_atomic(s) => {
            m.retain(|k, child| {
                let pe = PathElement::Field(k.clone());
                if set.members.contains(&pe) {
                    return false;
                }
                if let Some(sub) = set.children.get(&pe) {
                    remove_items(child, sub, field(s, k));
                }
                true
            });
        }
        Value::Array(list) => {
            let lt = list_type(s);
            if lt == ListType::Atomic {
                return;
            }
            let mut index = 0;
            list.retain_mut(|item| {
                let pe = item_element(item, index, &lt);
                index += 1;
                let Ok(pe) = pe else {
                    return true;
                };
                if set.members.contains(&pe) {
                    return false;
                }
                if let Some(sub) = set.children.get(&pe) {
                    remove_items(item, sub, items(s));
                }
                true
            });
        }
        _ => {}
    }
}
