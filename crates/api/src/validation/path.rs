//! Field paths as upstream renders them (`spec.containers[0].image`, `metadata.labels[app]`),
//! and lenient accessors over JSON objects that treat a missing, null or mistyped field as unset.

use serde_json::{Map, Value};
use std::fmt;

/// A field path under construction; cheap to extend and render.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(String);

impl Path {
    pub fn new(root: &str) -> Self {
        Path(root.to_string())
    }

    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    /// A nested chain of children, like upstream's `Child("a", "b")`.
    pub fn children(&self, names: &[&str]) -> Self {
        names.iter().fold(self.clone(), |p, n| p.child(n))
    }

    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, k: &str) -> Self {
        Path(format!("{}[{k}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Path> for String {
    fn from(p: Path) -> String {
        p.0
    }
}

impl From<&Path> for String {
    fn from(p: &Path) -> String {
        p.0.clone()
    }
}

/// Read-only accessors mirroring Go's zero values: an absent string reads as `""`, an absent
/// list as empty. Validation runs on schema-checked objects, but must not panic if it is not.
pub trait Get {
    /// The field if present and not null.
    fn field(&self, key: &str) -> Option<&Value>;

    fn has(&self, key: &str) -> bool {
        self.field(key).is_some()
    }
    fn str_of(&self, key: &str) -> &str {
        self.field(key).and_then(Value::as_str).unwrap_or("")
    }
    fn opt_str(&self, key: &str) -> Option<&str> {
        self.field(key).and_then(Value::as_str)
    }
    fn arr_of(&self, key: &str) -> &[Value] {
        self.field(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    fn obj_of(&self, key: &str) -> Option<&Map<String, Value>> {
        self.field(key).and_then(Value::as_object)
    }
    fn int_of(&self, key: &str) -> Option<i64> {
        self.field(key).and_then(Value::as_i64)
    }
    fn bool_of(&self, key: &str) -> Option<bool> {
        self.field(key).and_then(Value::as_bool)
    }
}

impl Get for Value {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key).filter(|v| !v.is_null())
    }
}

impl Get for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key).filter(|v| !v.is_null())
    }
}

/// The value at a chain of object keys, if every step is present.
pub fn at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |cur, k| cur.field(k))
}

/// A string-to-string map (labels, annotations, selectors) as sorted pairs; non-string values
/// are skipped because the schema check reports them.
pub fn string_map(v: Option<&Value>) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s)))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort_unstable();
    pairs
}
