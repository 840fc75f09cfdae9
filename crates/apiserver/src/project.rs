//! Partial parsing of stored JSON: only the paths a selector reads are built into a `Value`,
//! everything else is skipped by the parser without allocating. A watch with a label or field
//! selector tests every event of its resource (and the previous version of each), so building
//! whole objects there was the API server's largest cost on a busy cluster.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A set of dotted paths, as a trie; a node marked `whole` keeps its entire subtree.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Paths {
    whole: bool,
    children: BTreeMap<String, Paths>,
}

impl Paths {
    /// Adds the path `segments` (kept whole at its end).
    pub fn add<'a>(&mut self, segments: impl IntoIterator<Item = &'a str>) {
        let mut node = self;
        for seg in segments {
            if node.whole {
                return;
            }
            node = node.children.entry(seg.to_string()).or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    /// Parses `bytes` keeping only these paths; `None` when it is not JSON.
    pub fn parse(&self, bytes: &[u8]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = Seed(self).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(v)
    }
}

struct Seed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some((name, child)) => {
                    let v = map.next_value_seed(Seed(child))?;
                    out.insert(name.clone(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Anything but an object on the way to a kept path reads as absent.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// Reads a key and finds it among the kept children, without allocating for skipped keys.
struct Key<'p>(&'p Paths);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, k: &str) -> Result<Self::Value, E> {
        Ok(self.0.children.get_key_value(k))
    }
}

/// `{"metadata": <raw>}` of a stored object, borrowed: a metadata-only watch splices it.
#[derive(serde::Deserialize)]
struct MetaOnly<'a> {
    #[serde(borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// The raw JSON of `metadata` in `bytes` (`{}` when absent); `None` when it is not JSON.
pub fn raw_metadata(bytes: &[u8]) -> Option<&str> {
    let m: MetaOnly<'_> = serde_json::from_slice(bytes).ok()?;
    Some(m.metadata.map_or("{}", |r| r.get()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_paths() {
        let obj = json!({
            "metadata": {"name": "a", "labels": {"app": "web", "x": "y"}, "annotations": {"big": "z"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]},
        });
        let bytes = serde_json::to_vec(&obj).unwrap();
        let mut p = Paths::default();
        p.add(["metadata", "labels"]);
        p.add("spec.nodeName".split('.'));
        assert_eq!(
            p.parse(&bytes).unwrap(),
            json!({"metadata": {"labels": {"app": "web", "x": "y"}}, "spec": {"nodeName": "n1"}})
        );
        // A prefix kept whole swallows longer paths.
        let mut q = Paths::default();
        q.add(["status", "phase"]);
        q.add(["status"]);
        assert_eq!(q.parse(&bytes).unwrap()["status"], obj["status"]);
    }

    #[test]
    fn odd_shapes_read_as_absent_and_garbage_is_none() {
        let mut p = Paths::default();
        p.add(["spec", "nodeName"]);
        assert_eq!(
            p.parse(br#"{"spec": [1, 2], "x": {"spec": 1}}"#).unwrap(),
            json!({"spec": null})
        );
        assert_eq!(
            p.parse(br#"{"spec": {"node\u004eame": "esc"}}"#).unwrap(),
            json!({"spec": {"nodeName": "esc"}})
        );
        assert!(p.parse(b"{\"spec\": ").is_none());
        assert!(p.parse(b"{} trailing").is_none());
    }

    #[test]
    fn raw_metadata_is_spliced_as_stored() {
        let bytes = br#"{"kind":"Pod","metadata":{"name":"a","labels":{"x":"1"}},"spec":{}}"#;
        assert_eq!(
            raw_metadata(bytes),
            Some(r#"{"name":"a","labels":{"x":"1"}}"#)
        );
        assert_eq!(raw_metadata(b"{}"), Some("{}"));
        assert_eq!(raw_metadata(b"nope"), None);
    }
}
