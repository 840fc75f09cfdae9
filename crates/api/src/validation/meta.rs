//! `metadata` validation shared by every kind (upstream's `ValidateObjectMeta` and
//! `ValidateObjectMetaUpdate`), plus labels, annotations, label selectors and the small field
//! checks (`ValidateNonnegativeField`, `ValidateImmutableField`) the per-kind validators reuse.

use super::names::{self, NameRule};
use super::path::{Get, Path, string_map};
use super::{ErrorType, FieldError};
use serde_json::{Value, json};

pub const IS_NEGATIVE_ERROR: &str = "must be greater than or equal to 0";
pub const FIELD_IMMUTABLE: &str = "field is immutable";
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// `metadata` on create (and on update for the parts upstream re-checks).
pub fn validate_object_meta(obj: &Value, namespaced: bool, rule: NameRule) -> Vec<FieldError> {
    let meta = obj.field("metadata").unwrap_or(&Value::Null);
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    let generate_name = meta.str_of("generateName");
    if !generate_name.is_empty() {
        for msg in rule.check(generate_name, true) {
            errs.push(FieldError::invalid(
                path.child("generateName"),
                json!(generate_name),
                msg,
            ));
        }
    }
    let name = meta.str_of("name");
    if name.is_empty() {
        errs.push(FieldError::required(
            path.child("name"),
            "name or generateName is required",
        ));
    } else {
        for msg in rule.check(name, false) {
            errs.push(FieldError::invalid(path.child("name"), json!(name), msg));
        }
    }
    let namespace = meta.str_of("namespace");
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required(path.child("namespace"), ""));
        } else {
            for msg in names::is_dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    path.child("namespace"),
                    json!(namespace),
                    msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            path.child("namespace"),
            "not allowed on this type",
        ));
    }
    errs.extend(nonnegative(
        meta.int_of("generation").unwrap_or(0),
        &path.child("generation"),
    ));
    errs.extend(validate_meta_common(meta, &path));
    errs.extend(validate_finalizers(
        meta.arr_of("finalizers"),
        &path.child("finalizers"),
    ));
    errs
}

/// The `metadata` rules for an update: identity fields are immutable and the new object must
/// carry the `resourceVersion` it was read at.
pub fn validate_object_meta_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let null = Value::Null;
    let meta = obj.field("metadata").unwrap_or(&null);
    let old_meta = old.field("metadata").unwrap_or(&null);
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    if old_meta.has("deletionTimestamp") {
        let old_finalizers: Vec<&Value> = old_meta.arr_of("finalizers").iter().collect();
        let mut added: Vec<String> = meta
            .arr_of("finalizers")
            .iter()
            .filter(|f| !old_finalizers.contains(f))
            .filter_map(Value::as_str)
            .map(|f| format!("{f:?}"))
            .collect();
        added.sort_unstable();
        added.dedup();
        if !added.is_empty() {
            let detail = format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                added.join(", ")
            );
            errs.push(FieldError::forbidden(path.child("finalizers"), detail));
        }
    }
    let rv = meta.str_of("resourceVersion");
    if rv.is_empty() {
        errs.push(FieldError::invalid(
            path.child("resourceVersion"),
            json!(rv),
            "must be specified for an update",
        ));
    }
    let generation = meta.int_of("generation").unwrap_or(0);
    if generation < old_meta.int_of("generation").unwrap_or(0) {
        errs.push(FieldError::invalid(
            path.child("generation"),
            json!(generation),
            "must not be decremented",
        ));
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        errs.extend(immutable(
            meta.field(field),
            old_meta.field(field),
            &path.child(field),
        ));
    }
    errs.extend(validate_meta_common(meta, &path));
    errs
}

fn validate_meta_common(meta: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = validate_labels(meta.field("labels"), &path.child("labels"));
    errs.extend(validate_annotations(
        meta.field("annotations"),
        &path.child("annotations"),
    ));
    errs.extend(validate_owner_references(
        meta.arr_of("ownerReferences"),
        &path.child("ownerReferences"),
    ));
    errs.extend(validate_managed_fields(
        meta.arr_of("managedFields"),
        &path.child("managedFields"),
    ));
    errs
}

pub fn validate_labels(labels: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in string_map(labels) {
        errs.extend(validate_qualified_name(k, path));
        for msg in names::is_valid_label_value(v) {
            errs.push(FieldError::invalid(path, json!(v), msg));
        }
    }
    errs
}

pub fn validate_qualified_name(name: &str, path: &Path) -> Vec<FieldError> {
    names::is_qualified_name(name)
        .into_iter()
        .map(|msg| FieldError::invalid(path, json!(name), msg))
        .collect()
}

pub fn validate_annotations(annotations: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let pairs = string_map(annotations);
    let mut errs = Vec::new();
    for (k, _) in &pairs {
        // Annotation keys are qualified names compared case-insensitively.
        for msg in names::is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(path, json!(k), msg));
        }
    }
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

fn validate_owner_references(refs: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut first_controller: Option<String> = None;
    for r in refs {
        let api_version = r.str_of("apiVersion");
        let kind = r.str_of("kind");
        // `FromAPIVersionAndKind`: an apiVersion with more than one `/` parses to nothing.
        let version = match api_version.split('/').collect::<Vec<_>>().as_slice() {
            [v] | [_, v] => *v,
            _ => "",
        };
        if version.is_empty() {
            errs.push(FieldError::invalid(
                path.child("apiVersion"),
                json!(api_version),
                "version must not be empty",
            ));
        }
        if kind.is_empty() {
            errs.push(FieldError::invalid(
                path.child("kind"),
                json!(kind),
                "kind must not be empty",
            ));
        }
        let name = r.str_of("name");
        if name.is_empty() {
            errs.push(FieldError::invalid(
                path.child("name"),
                json!(name),
                "name must not be empty",
            ));
        }
        let uid = r.str_of("uid");
        if uid.is_empty() {
            errs.push(FieldError::invalid(
                path.child("uid"),
                json!(uid),
                "uid must not be empty",
            ));
        }
        if api_version == "v1" && kind == "Event" {
            errs.push(FieldError::invalid(
                path,
                r.clone(),
                "/v1, Kind=Event is disallowed from being an owner",
            ));
        }
        if r.bool_of("controller") == Some(true) {
            let current = format!("{kind}/{name}");
            match &first_controller {
                Some(first) => errs.push(FieldError::invalid(
                    path,
                    Value::Array(refs.to_vec()),
                    format!("Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"),
                )),
                None => first_controller = Some(current),
            }
        }
    }
    errs
}

fn validate_finalizers(finalizers: &[Value], path: &Path) -> Vec<FieldError> {
    let names: Vec<&str> = finalizers.iter().filter_map(Value::as_str).collect();
    let mut errs: Vec<FieldError> = names
        .iter()
        .flat_map(|f| validate_qualified_name(f, path))
        .collect();
    if names.contains(&"orphan") && names.contains(&"foregroundDeletion") {
        errs.push(FieldError::invalid(
            path,
            Value::Array(finalizers.to_vec()),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    errs
}

fn validate_managed_fields(entries: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = path.index(i);
        let op = e.str_of("operation");
        if op != "Apply" && op != "Update" {
            errs.push(FieldError::invalid(
                p.child("operation"),
                json!(op),
                "must be `Apply` or `Update`",
            ));
        }
        let ty = e.str_of("fieldsType");
        if !ty.is_empty() && ty != "FieldsV1" {
            errs.push(FieldError::invalid(
                p.child("fieldsType"),
                json!(ty),
                "must be `FieldsV1`",
            ));
        }
    }
    errs
}

pub fn nonnegative(v: i64, path: &Path) -> Option<FieldError> {
    (v < 0).then(|| FieldError::invalid(path, json!(v), IS_NEGATIVE_ERROR))
}

/// `ValidateImmutableField`, where absent and null are the same value.
pub fn immutable(new: Option<&Value>, old: Option<&Value>, path: &Path) -> Option<FieldError> {
    let norm = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    let (new, old) = (norm(new), norm(old));
    (new != old).then(|| FieldError::invalid(path, new.unwrap_or(Value::Null), FIELD_IMMUTABLE))
}

/// Like [`immutable`], but an unset field compares equal to its Go zero value.
pub fn immutable_str(new: &str, old: &str, path: &Path) -> Option<FieldError> {
    (new != old).then(|| FieldError::invalid(path, json!(new), FIELD_IMMUTABLE))
}

pub fn validate_label_selector(sel: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(sel) = sel else { return vec![] };
    let mut errs = validate_labels(sel.field("matchLabels"), &path.child("matchLabels"));
    for (i, req) in sel.arr_of("matchExpressions").iter().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let values = req.arr_of("values");
        match req.str_of("operator") {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                p.child("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                p.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => errs.push(FieldError::invalid(
                p.child("operator"),
                json!(op),
                "not a valid selector operator",
            )),
        }
        errs.extend(validate_qualified_name(req.str_of("key"), &p.child("key")));
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or("");
            for msg in names::is_valid_label_value(v) {
                errs.push(FieldError::invalid(
                    p.child("values").index(j),
                    json!(v),
                    msg,
                ));
            }
        }
    }
    errs
}

/// Whether a `metav1.LabelSelector` selects these labels. An empty selector selects
/// everything; callers decide what an absent one means.
pub fn selector_matches(sel: &Value, labels: Option<&Value>) -> bool {
    let labels = string_map(labels);
    let get = |k: &str| labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v);
    let equal = string_map(sel.field("matchLabels"))
        .into_iter()
        .all(|(k, v)| get(k) == Some(v));
    equal
        && sel.arr_of("matchExpressions").iter().all(|req| {
            let got = get(req.str_of("key"));
            let mut values = req.arr_of("values").iter().filter_map(Value::as_str);
            match req.str_of("operator") {
                "In" => got.is_some_and(|g| values.any(|v| v == g)),
                "NotIn" => got.is_none_or(|g| values.all(|v| v != g)),
                "Exists" => got.is_some(),
                "DoesNotExist" => got.is_none(),
                _ => false,
            }
        })
}

/// A selector with neither `matchLabels` nor `matchExpressions`.
pub fn selector_is_empty(sel: &Value) -> bool {
    sel.obj_of("matchLabels").is_none_or(|m| m.is_empty())
        && sel.arr_of("matchExpressions").is_empty()
}

pub fn not_found(path: &Path, value: Value) -> FieldError {
    FieldError::new(ErrorType::NotFound, path, Some(value), "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(errs: Vec<FieldError>) -> Vec<String> {
        errs.iter().map(FieldError::full_message).collect()
    }

    #[test]
    fn object_meta_create() {
        let subdomain = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
        let cases: Vec<(Value, bool, Vec<String>)> = vec![
            (json!({"metadata": {"name": "ok", "namespace": "default"}}), true, vec![]),
            (json!({"metadata": {"namespace": "default"}}), true, vec![
                "metadata.name: Required value: name or generateName is required".into(),
            ]),
            (json!({"metadata": {"name": "ok"}}), true, vec!["metadata.namespace: Required value".into()]),
            (json!({"metadata": {"name": "ok", "namespace": "x"}}), false, vec![
                "metadata.namespace: Forbidden: not allowed on this type".into(),
            ]),
            (json!({"metadata": {"name": "Bad_Name", "namespace": "default"}}), true, vec![
                format!("metadata.name: Invalid value: \"Bad_Name\": {subdomain}"),
            ]),
            (json!({"metadata": {"name": "ok", "labels": {"app": "-x"}}}), false, vec![
                "metadata.labels: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into(),
            ]),
            (json!({"metadata": {"name": "ok", "finalizers": ["orphan", "foregroundDeletion"]}}), false, vec![
                "metadata.finalizers: Invalid value: []string{\"orphan\", \"foregroundDeletion\"}: finalizer orphan and foregroundDeletion cannot be both set".into(),
            ]),
            (json!({"metadata": {"name": "ok", "ownerReferences": [{"apiVersion": "a/b/c", "kind": "X", "name": "n"}]}}), false, vec![
                "metadata.ownerReferences.apiVersion: Invalid value: \"a/b/c\": version must not be empty".into(),
                "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty".into(),
            ]),
            (json!({"metadata": {"name": "ok", "annotations": {"a": "x".repeat(256 * 1024)}}}), false, vec![
                "metadata.annotations: Too long: may not be more than 262144 bytes".into(),
            ]),
            (json!({"metadata": {"name": "ok", "generation": -1}}), false, vec![
                "metadata.generation: Invalid value: -1: must be greater than or equal to 0".into(),
            ]),
        ];
        for (obj, namespaced, want) in cases {
            assert_eq!(
                messages(validate_object_meta(&obj, namespaced, NameRule::Subdomain)),
                want,
                "{obj}"
            );
        }
    }

    #[test]
    fn object_meta_update() {
        let old =
            json!({"metadata": {"name": "a", "uid": "1", "resourceVersion": "5", "generation": 2}});
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (
                json!({"metadata": {"name": "a", "uid": "1", "resourceVersion": "5", "generation": 2}}),
                vec![],
            ),
            (
                json!({"metadata": {"name": "b", "uid": "1", "resourceVersion": "5", "generation": 2}}),
                vec!["metadata.name: Invalid value: \"b\": field is immutable"],
            ),
            (
                json!({"metadata": {"name": "a", "uid": "1", "generation": 1}}),
                vec![
                    "metadata.resourceVersion: Invalid value: \"\": must be specified for an update",
                    "metadata.generation: Invalid value: 1: must not be decremented",
                ],
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(
                messages(validate_object_meta_update(&obj, &old)),
                want,
                "{obj}"
            );
        }
    }

    #[test]
    fn selectors() {
        let labels = json!({"app": "web", "tier": "fe"});
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(selector_matches(&sel, Some(&labels)), want, "{sel}");
        }
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In"}, {"key": "b", "operator": "Foo"}]});
        assert_eq!(
            messages(validate_label_selector(
                Some(&bad),
                &Path::new("spec.selector")
            )),
            [
                "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[1].operator: Invalid value: \"Foo\": not a valid selector operator",
            ]
        );
    }
}
