//! Checks an object against its structural schema: JSON types, enums and required fields as
//! field errors, and unknown fields, which are pruned and reported for the caller's
//! `fieldValidation` (Strict, Warn, Ignore).

use serde_json::{Map, Value};

use super::{QUANTITY_FORMAT, SchemaRef, Type};
use crate::validation::field::{ErrorType, FieldError};

/// Whose rules to check by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A built-in kind: the JSON types Go's decoder accepts (no fractional numbers for integer
    /// fields, int32 in range). `required` and `enum` are left to per-kind validation, like
    /// upstream, which does not enforce its OpenAPI there.
    Builtin,
    /// A custom resource: its schema's types (an integral `1.0` is an integer), `enum` and
    /// `required`.
    Custom,
}

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub errors: Vec<FieldError>,
    /// Paths of the pruned unknown fields, in document order, e.g. `spec.template.spec.foo`.
    pub unknown_fields: Vec<String>,
}

impl Report {
    /// Upstream's strict-mode rejection (a 400 BadRequest), when there were unknown fields:
    /// `strict decoding error: unknown field "spec.foo", unknown field "x"`.
    pub fn strict_decoding_error(&self) -> Option<String> {
        if self.unknown_fields.is_empty() {
            return None;
        }
        Some(format!(
            "strict decoding error: {}",
            self.unknown_field_messages().join(", ")
        ))
    }

    /// One `unknown field "path"` per unknown field: upstream's Warn-mode warnings.
    pub fn unknown_field_messages(&self) -> Vec<String> {
        self.unknown_fields
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect()
    }
}

/// Checks `value` against `schema`, pruning unknown fields and non-nullable nulls in place.
pub fn check(schema: SchemaRef<'_>, value: &mut Value, mode: Mode) -> Report {
    let mut checker = Checker {
        mode,
        report: Report::default(),
    };
    checker.walk(schema, value, &mut String::new());
    checker.report
}

struct Checker {
    mode: Mode,
    report: Report,
}

/// The JSON type of a value in go-openapi's words.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Checker {
    fn walk(&mut self, schema: SchemaRef<'_>, value: &mut Value, path: &mut String) {
        let node = schema.node();
        if value.is_null() && (node.nullable || node.ty == Type::Any) {
            return;
        }
        let expected = match (node.ty, &*value) {
            (Type::Any, _)
            | (Type::Object, Value::Object(_))
            | (Type::Array, Value::Array(_))
            | (Type::String, Value::String(_))
            | (Type::Number, Value::Number(_))
            | (Type::Boolean, Value::Bool(_))
            | (Type::IntOrString, Value::String(_)) => None,
            (Type::Integer, Value::Number(n)) => {
                return self.integer(schema, n.clone(), value, path);
            }
            (Type::IntOrString, Value::Number(n))
                if self.is_integer(n) || node.format.as_deref() == Some(QUANTITY_FORMAT) =>
            {
                None
            }
            (Type::Object, _) => Some("object"),
            (Type::Array, _) => Some("array"),
            (Type::String, _) => Some("string"),
            (Type::Integer, _) => Some("integer"),
            (Type::Number, _) => Some("number"),
            (Type::Boolean, _) => Some("boolean"),
            (Type::IntOrString, _) => Some("integer or string"),
        };
        if let Some(expected) = expected {
            let actual = json_type(value);
            let detail = format!("{path} in body must be of type {expected}: \"{actual}\"");
            self.report.errors.push(FieldError::new(
                ErrorType::TypeInvalid,
                path.clone(),
                Some(actual.into()),
                detail,
            ));
        }
        self.check_enum(schema, value, path);
        if expected.is_some() {
            return;
        }
        match value {
            Value::Object(map) => self.object(schema, map, path),
            Value::Array(items) => {
                let Some(item_schema) = schema.items() else {
                    return;
                };
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    // Go decodes a null item of a built-in kind into the item's zero value.
                    if !(item.is_null() && self.mode == Mode::Builtin) {
                        self.walk(item_schema, item, path);
                    }
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn is_integer(&self, n: &serde_json::Number) -> bool {
        n.is_i64()
            || n.is_u64()
            || (self.mode == Mode::Custom
                && n.as_f64()
                    .is_some_and(|f| f.is_finite() && f.fract() == 0.0))
    }

    fn integer(&mut self, schema: SchemaRef<'_>, n: serde_json::Number, value: &Value, path: &str) {
        if !self.is_integer(&n) {
            let detail = format!("{path} in body must be of type integer: \"number\"");
            self.report.errors.push(FieldError::new(
                ErrorType::TypeInvalid,
                path,
                Some("number".into()),
                detail,
            ));
        } else if self.mode == Mode::Builtin
            && schema.node().format.as_deref() == Some("int32")
            && n.as_i64().is_none_or(|i| i32::try_from(i).is_err())
        {
            let detail = format!("{path} in body must be of type int32: \"{n}\"");
            self.report
                .errors
                .push(FieldError::invalid(path, value.clone(), detail));
        }
        self.check_enum(schema, value, path);
    }

    fn check_enum(&mut self, schema: SchemaRef<'_>, value: &Value, path: &str) {
        let allowed = &schema.node().enum_values;
        if self.mode == Mode::Builtin || allowed.is_empty() || allowed.contains(value) {
            return;
        }
        let names: Vec<String> = allowed
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.report
            .errors
            .push(FieldError::not_supported(path, value.clone(), &names));
    }

    fn object(&mut self, schema: SchemaRef<'_>, map: &mut Map<String, Value>, path: &mut String) {
        let node = schema.node();
        let mut pruned = Vec::new();
        for (key, child) in map.iter_mut() {
            let len = path.len();
            let property = node.properties.get(key);
            match property.or(node.additional_properties.as_ref()) {
                Some(_) if property.is_none() => path.push_str(&format!("[{key}]")),
                _ if len == 0 => path.push_str(key),
                _ => {
                    path.push('.');
                    path.push_str(key);
                }
            }
            match property.or(node.additional_properties.as_ref()) {
                Some(&id) => {
                    let child_schema = schema.schemas.get(id);
                    let child_node = child_schema.node();
                    if !child.is_null() || child_node.nullable || child_node.ty == Type::Any {
                        self.walk(child_schema, child, path);
                    } else if property.is_some() || self.mode == Mode::Custom {
                        // Go decodes null into the zero value, and upstream prunes nulls of
                        // non-nullable custom resource fields: both read as absent.
                        pruned.push(key.clone());
                    }
                }
                None if node.preserve_unknown_fields => {}
                None => {
                    pruned.push(key.clone());
                    self.report.unknown_fields.push(path.clone());
                }
            }
            path.truncate(len);
        }
        for key in pruned {
            map.remove(&key);
        }
        if self.mode == Mode::Custom {
            for key in &node.required {
                if !map.contains_key(key) {
                    let field = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    self.report.errors.push(FieldError::required(field, ""));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::{Schemas, builtin, crd};

    struct Case {
        name: &'static str,
        input: Value,
        errors: &'static [&'static str],
        unknown: &'static [&'static str],
        /// The object after pruning; `None` when unchanged.
        pruned: Option<Value>,
    }

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}}, "spec": spec})
    }

    fn run(schema: SchemaRef<'_>, mode: Mode, cases: Vec<Case>) {
        for case in cases {
            let mut value = case.input.clone();
            let report = check(schema, &mut value, mode);
            let errors: Vec<String> = report.errors.iter().map(FieldError::full_message).collect();
            assert_eq!(errors, case.errors, "{}", case.name);
            assert_eq!(report.unknown_fields, case.unknown, "{}", case.name);
            assert_eq!(value, case.pruned.unwrap_or(case.input), "{}", case.name);
        }
    }

    #[test]
    fn deployment_types_unknown_fields_and_pruning() {
        let schema = builtin()
            .root("apps", "v1", "Deployment")
            .expect("deployment schema");
        let container = |extra: Value| {
            let mut c = json!({"name": "c", "image": "nginx", "resources": {"limits": {"cpu": "500m", "memory": 1024}}});
            if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
                c.extend(extra);
            }
            json!({"template": {"spec": {"containers": [c]}}})
        };
        run(
            schema,
            Mode::Builtin,
            vec![
                Case {
                    name: "valid",
                    input: deployment(
                        json!({"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}),
                    ),
                    errors: &[],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "string replicas",
                    input: deployment(json!({"replicas": "3"})),
                    errors: &[
                        r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "fractional replicas",
                    input: deployment(json!({"replicas": 1.5})),
                    errors: &[
                        r#"spec.replicas: Invalid value: "number": spec.replicas in body must be of type integer: "number""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "int32 overflow",
                    input: deployment(json!({"replicas": 3_000_000_000_u64})),
                    errors: &[
                        r#"spec.replicas: Invalid value: 3000000000: spec.replicas in body must be of type int32: "3000000000""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "object where a string belongs, in a list",
                    input: deployment(container(json!({"image": {"x": 1}}))),
                    errors: &[
                        r#"spec.template.spec.containers[0].image: Invalid value: "object": spec.template.spec.containers[0].image in body must be of type string: "object""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "quantity takes fractions, int-or-string does not",
                    input: deployment(
                        json!({"strategy": {"rollingUpdate": {"maxSurge": 0.5}}, "template": {"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": 0.5}}}]}}}),
                    ),
                    errors: &[
                        r#"spec.strategy.rollingUpdate.maxSurge: Invalid value: "number": spec.strategy.rollingUpdate.maxSurge in body must be of type integer or string: "number""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "unknown fields are pruned and reported",
                    input: deployment(
                        json!({"foo": 1, "replicas": 1, "template": {"spec": {"containers": [{"name": "c", "imagePullPolicyy": "Always"}]}}}),
                    ),
                    errors: &[],
                    unknown: &[
                        "spec.foo",
                        "spec.template.spec.containers[0].imagePullPolicyy",
                    ],
                    pruned: Some(deployment(
                        json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}),
                    )),
                },
                Case {
                    name: "unknown top-level and metadata fields",
                    input: json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "bogus": true}, "x": 1}),
                    errors: &[],
                    unknown: &["metadata.bogus", "x"],
                    pruned: Some(
                        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
                    ),
                },
                Case {
                    name: "nulls read as absent, null map values stay",
                    input: deployment(
                        json!({"replicas": null, "selector": {"matchLabels": {"a": null}}}),
                    ),
                    errors: &[],
                    unknown: &[],
                    pruned: Some(deployment(
                        json!({"selector": {"matchLabels": {"a": null}}}),
                    )),
                },
                Case {
                    name: "map values are checked with bracketed keys",
                    input: deployment(json!({"selector": {"matchLabels": {"app": 1}}})),
                    errors: &[
                        r#"spec.selector.matchLabels[app]: Invalid value: "integer": spec.selector.matchLabels[app] in body must be of type string: "integer""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
            ],
        );
    }

    #[test]
    fn free_form_fields_keep_everything() {
        let schema = builtin()
            .root("apps", "v1", "ControllerRevision")
            .expect("controllerrevision schema");
        let input = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": 1, "data": {"any": {"thing": [1]}}});
        run(
            schema,
            Mode::Builtin,
            vec![Case {
                name: "raw extension",
                input,
                errors: &[],
                unknown: &[],
                pruned: None,
            }],
        );
    }

    #[test]
    fn builtin_mode_ignores_required_and_reports_strictly() {
        let schema = builtin().root("", "v1", "Pod").expect("pod schema");
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"image": "x", "foo": 1}]}, "y": 2});
        let report = check(schema, &mut pod, Mode::Builtin);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.strict_decoding_error().as_deref(),
            Some(
                r#"strict decoding error: unknown field "spec.containers[0].foo", unknown field "y""#
            )
        );
    }

    #[test]
    fn custom_resource_schema() {
        let props = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer"},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "port": {"x-kubernetes-int-or-string": true},
                        "opt": {"type": "string", "nullable": true},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "closed": {"type": "object"},
                        "tags": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        });
        let mut schemas = Schemas::default();
        let root = crd::from_crd_schema(&mut schemas, &props);
        let cr = |spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec});
        run(
            schemas.get(root),
            Mode::Custom,
            vec![
                Case {
                    name: "valid, integral float is an integer",
                    input: cr(
                        json!({"size": 2.0, "mode": "a", "port": "http", "opt": null, "free": {"x": {"y": 1}}}),
                    ),
                    errors: &[],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "required, enum, type",
                    input: cr(json!({"mode": "c", "port": true, "tags": ["a", 1]})),
                    errors: &[
                        r#"spec.mode: Unsupported value: "c": supported values: "a", "b""#,
                        r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer or string: "boolean""#,
                        r#"spec.tags[1]: Invalid value: "integer": spec.tags[1] in body must be of type string: "integer""#,
                        "spec.size: Required value",
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "enum and type errors both reported",
                    input: cr(json!({"size": 1, "mode": 5})),
                    errors: &[
                        r#"spec.mode: Invalid value: "integer": spec.mode in body must be of type string: "integer""#,
                        r#"spec.mode: Unsupported value: 5: supported values: "a", "b""#,
                    ],
                    unknown: &[],
                    pruned: None,
                },
                Case {
                    name: "pruning: unknown, closed objects, non-nullable nulls, metadata",
                    input: json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "zz": 1},
                                  "spec": {"size": 1, "mode": null, "closed": {"a": 1}, "extra": true}}),
                    errors: &[],
                    unknown: &["metadata.zz", "spec.closed.a", "spec.extra"],
                    pruned: Some(cr(json!({"size": 1, "closed": {}}))),
                },
            ],
        );
    }
}
