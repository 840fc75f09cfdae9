//! Server-side apply and managedFields tracking, after structured-merge-diff and the apiserver's
//! fieldmanager: every write records which manager owns which fields; an apply merges the applied
//! configuration, drops fields its manager stopped applying, and refuses to overwrite fields
//! other managers own unless forced.
//!
//! Not modelled: conversion of field sets between API versions (entries keep the version they
//! were written with), the ten-update-manager cap ("ancient-changes"), and the migration between
//! client-side apply's last-applied annotation and server-side apply.

mod fieldpath;
mod managed;
mod typed;

use crate::schema::SchemaRef;
use fieldpath::{PathElement, Set, path_string};
pub use managed::Operation;
use managed::{Entry, timestamp};
use serde_json::{Map, Value};

/// One field an apply would take from another manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    /// The field as upstream prints it, e.g. `.spec.replicas`.
    pub field: String,
}

impl Conflict {
    /// The manager as upstream names it: `"name"`, plus ` with subresource "status"` and, for
    /// updates, ` using apps/v1`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    /// The `message` of this conflict's `FieldManagerConflict` status cause.
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.describe())
    }
}

/// Why an apply failed.
///
/// - `Conflicts` → 409 Conflict with reason `Conflict`; the message is this error's `Display`
///   (upstream's text) and each conflict is a cause `{reason: FieldManagerConflict, message:
///   Conflict::cause_message(), field: Conflict::field}`.
/// - `BadRequest` → 400 (e.g. the applied object carries managedFields).
/// - `Internal` → 500: upstream reports undecodable managedFields and objects that do not fit
///   their schema (list-map items without their keys) as plain errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl ApplyError {
    pub fn http_code(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::BadRequest(_) => 400,
            ApplyError::Internal(_) => 500,
        }
    }
}

fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: {}: {}",
            c.cause_message(),
            c.field
        );
    }
    let mut lines: Vec<String> = Vec::new();
    let mut current = None;
    for c in conflicts {
        let who = c.describe();
        if current.as_ref() != Some(&who) {
            lines.push(format!("conflicts with {who}:"));
            current = Some(who);
        }
        lines.push(format!("- {}", c.field));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Where a write lands, beyond the object: the subresource ("status", "scale"; empty for the
/// main resource) and the field paths the endpoint's strategy resets (e.g. `[["status"]]` on the
/// main resource of a kind with a status subresource), which no manager gains there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub subresource: &'a str,
    pub reset_fields: &'a [&'a [&'a str]],
}

impl Scope<'_> {
    fn reset_paths(&self) -> Vec<Vec<PathElement>> {
        self.reset_fields
            .iter()
            .map(|p| {
                p.iter()
                    .map(|f| PathElement::Field((*f).to_string()))
                    .collect()
            })
            .collect()
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (`None` creates), on the main
/// resource. Returns the new object with its managedFields updated.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: Option<SchemaRef<'_>>,
    now: &str,
) -> Result<Value, ApplyError> {
    apply_in(Scope::default(), live, applied, manager, force, schema, now)
}

/// `apply` on a given subresource / with reset fields.
pub fn apply_in(
    scope: Scope<'_>,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: Option<SchemaRef<'_>>,
    now: &str,
) -> Result<Value, ApplyError> {
    if managed::managed_fields(applied).is_some() {
        return Err(ApplyError::BadRequest(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let empty = Value::Object(Map::new());
    let live = live.unwrap_or(&empty);
    let mut entries = managed::decode(live)
        .map_err(|e| ApplyError::Internal(format!("failed to decode managed fields: {e}")))?;
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reset = scope.reset_paths();

    let typed_err = |what: &str, e: String| {
        ApplyError::Internal(format!(
            "failed to create typed {what} object ({}): {e}",
            gvk(applied)
        ))
    };
    let mut applied_set = typed::field_set(applied, schema).map_err(|e| typed_err("patch", e))?;
    for p in &reset {
        applied_set.remove_prefix(p);
    }
    let mut merged = typed::merge(Some(live), Some(applied), schema)
        .map_err(|e| typed_err("live", e))?
        .unwrap_or_else(|| empty.clone());
    remove_managed_fields(&mut merged);

    let me = match entries
        .iter()
        .position(|e| e.is(manager, Operation::Apply, "", scope.subresource))
    {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_string(),
                operation: Operation::Apply,
                api_version: String::new(),
                subresource: scope.subresource.to_string(),
                time: None,
                set: Set::default(),
            });
            entries.len() - 1
        }
    };
    entries[me].api_version = api_version.to_string();
    let last = std::mem::replace(&mut entries[me].set, applied_set);

    // Fields this manager applied last time and nobody (itself included) owns now are removed.
    if !last.is_empty() {
        let mut owned = Set::default();
        for e in &entries {
            owned.union_with(&e.set);
        }
        let stale = typed::ensure_named_fields(&last, schema)
            .difference(&typed::ensure_named_fields(&owned, schema));
        typed::remove_items(&mut merged, &stale, schema);
    }

    let mut cmp = typed::compare(live, &merged, schema).map_err(|e| typed_err("live", e))?;
    cmp.exclude(&reset);
    let mut changed = cmp.modified;
    changed.union_with(&cmp.added);

    let mut conflicts: Vec<(&Entry, Vec<Vec<PathElement>>)> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, e)| (e, e.set.intersection(&changed).paths()))
        .filter(|(_, paths)| !paths.is_empty())
        .collect();
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|(a, _), (b, _)| {
            (&a.manager, a.operation, &a.api_version, &a.subresource).cmp(&(
                &b.manager,
                b.operation,
                &b.api_version,
                &b.subresource,
            ))
        });
        let list = conflicts
            .into_iter()
            .flat_map(|(e, paths)| {
                paths.into_iter().map(|p| Conflict {
                    manager: e.manager.clone(),
                    operation: e.operation,
                    api_version: e.api_version.clone(),
                    subresource: e.subresource.clone(),
                    field: path_string(&p),
                })
            })
            .collect();
        return Err(ApplyError::Conflicts(list));
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if i != me {
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
    }
    entries[me].set = strip_meta(&entries[me].set);
    if !same_object(live, &merged) {
        entries[me].time = Some(timestamp(now));
    }
    entries.retain(|e| !e.set.is_empty());
    managed::encode(&mut merged, entries);
    Ok(merged)
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes ownership of every
/// field it added or changed, and fields it removed are no longer anyone's. Managed fields the
/// client sent are honoured (`[]` or `[{}]` resets them); otherwise the old object's are kept.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    schema: Option<SchemaRef<'_>>,
    now: &str,
) {
    track_update_in(
        Scope::default(),
        old,
        new,
        manager,
        api_version,
        schema,
        now,
    );
}

/// `track_update` on a given subresource / with reset fields. Like upstream's `UpdateNoErrors`,
/// an object that does not fit its schema ends up with no managedFields rather than an error.
pub fn track_update_in(
    scope: Scope<'_>,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    schema: Option<SchemaRef<'_>>,
    now: &str,
) {
    let from_old = || {
        old.map(managed::decode)
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let mut entries = if !scope.subresource.is_empty() {
        from_old()
    } else if managed::is_reset(new) {
        Vec::new()
    } else {
        match managed::decode(new) {
            Ok(e) if !e.is_empty() => e,
            _ => from_old(),
        }
    };
    remove_managed_fields(new);

    let zero;
    let old = match old {
        Some(o) => o,
        None => {
            zero = zero_object(new, schema, api_version);
            &zero
        }
    };
    let Ok(mut cmp) = typed::compare(old, new, schema) else {
        return;
    };
    cmp.exclude(&scope.reset_paths());
    let mut changed = cmp.modified;
    changed.union_with(&cmp.added);
    for e in &mut entries {
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    entries.retain(|e| !e.set.is_empty());

    let mine = strip_meta(&changed);
    if !mine.is_empty() {
        let time = Some(timestamp(now));
        match entries
            .iter_mut()
            .find(|e| e.is(manager, Operation::Update, api_version, scope.subresource))
        {
            Some(e) => {
                e.set.union_with(&mine);
                e.time = time;
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: Operation::Update,
                api_version: api_version.to_string(),
                subresource: scope.subresource.to_string(),
                time,
                set: mine,
            }),
        }
    }
    managed::encode(new, entries);
}

/// Fields no manager ever owns: type meta and server-set metadata.
fn strip_meta(set: &Set) -> Set {
    let mut strip = Set::default();
    for f in ["apiVersion", "kind", "metadata"] {
        strip.insert(&[PathElement::Field(f.into())]);
    }
    for f in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        strip.insert(&[
            PathElement::Field("metadata".into()),
            PathElement::Field(f.into()),
        ]);
    }
    set.difference(&strip)
}

fn remove_managed_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

/// Equality ignoring managedFields.
fn same_object(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let meta = |m: &Map<String, Value>| -> Option<Vec<(String, Value)>> {
        m.get("metadata").and_then(Value::as_object).map(|meta| {
            meta.iter()
                .filter(|(k, _)| *k != "managedFields")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    };
    let rest = |m: &Map<String, Value>| m.iter().filter(|(k, _)| *k != "metadata").count();
    rest(a) == rest(b)
        && a.iter()
            .filter(|(k, _)| *k != "metadata")
            .all(|(k, v)| b.get(k) == Some(v))
        && meta(a) == meta(b)
}

/// What upstream compares a created object against: the zero value of its Go type, in which
/// non-pointer structs exist as empty objects and fields without `omitempty` as null. Custom
/// resources start from nothing. Without Go types, declared struct fields holding objects stand in
/// for non-pointer structs and required fields for those without `omitempty`.
fn zero_object(new: &Value, schema: Option<SchemaRef<'_>>, api_version: &str) -> Value {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if group.contains('.') && !group.ends_with(".k8s.io") {
        return Value::Object(Map::new());
    }
    skeleton(new, schema)
}

fn skeleton(v: &Value, s: Option<SchemaRef<'_>>) -> Value {
    let mut out = Map::new();
    if let Some(m) = v.as_object() {
        for (k, c) in m {
            let f = typed::field(s, k);
            let is_struct = f.is_some_and(|f| {
                let n = f.node();
                !n.properties.is_empty() && n.additional_properties.is_none() && !n.map_atomic
            });
            if typed::is_named(s, k) && is_struct && c.as_object().is_some_and(|o| !o.is_empty()) {
                out.insert(k.clone(), skeleton(c, f));
            } else if s.is_some_and(|s| s.node().required.contains(k)) {
                out.insert(k.clone(), Value::Null);
            }
        }
    }
    Value::Object(out)
}

fn gvk(obj: &Value) -> String {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

#[cfg(test)]
mod tests;
