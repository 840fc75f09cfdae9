//! Structural schemas of custom resources, from a CRD version's `openAPIV3Schema`.

use std::collections::HashMap;

use serde_json::Value;

use super::convert::Converter;
use super::{Node, NodeId, Schemas, Type, builtin};

/// Adds the schema of one CRD version (its `openAPIV3Schema`, a JSONSchemaProps) to `schemas`
/// and returns its root.
///
/// The root and every `x-kubernetes-embedded-resource` object also get `apiVersion`, `kind`
/// and an ObjectMeta `metadata`, as upstream treats them whatever the schema says, so that
/// unknown metadata fields prune like on built-in kinds.
pub fn from_crd_schema(schemas: &mut Schemas, json_schema_props: &Value) -> NodeId {
    let first = schemas.nodes.len();
    let mut converter = Converter::custom();
    let root = converter.convert(schemas, json_schema_props);
    converter.finish(schemas);
    let resources: Vec<NodeId> = std::iter::once(root)
        .chain((first..schemas.nodes.len()).filter(|&id| schemas.nodes[id].embedded_resource))
        .collect();
    let mut copied = HashMap::new();
    let meta = builtin::object_meta();
    for id in resources {
        let api_version = schemas.add(Node {
            ty: Type::String,
            ..Node::default()
        });
        let kind = schemas.add(Node {
            ty: Type::String,
            ..Node::default()
        });
        let metadata = copy(meta.schemas, meta.id, schemas, &mut copied);
        let node = &mut schemas.nodes[id];
        node.ty = Type::Object;
        node.properties.insert("apiVersion".into(), api_version);
        node.properties.insert("kind".into(), kind);
        node.properties.insert("metadata".into(), metadata);
    }
    root
}

/// Copies the subtree at `id` of `from` into `to`, sharing nodes already copied.
fn copy(
    from: &Schemas,
    id: NodeId,
    to: &mut Schemas,
    copied: &mut HashMap<NodeId, NodeId>,
) -> NodeId {
    if let Some(&done) = copied.get(&id) {
        return done;
    }
    let new = to.add(Node::default());
    copied.insert(id, new);
    let mut node = from.nodes[id].clone();
    for child in node.properties.values_mut() {
        *child = copy(from, *child, to, copied);
    }
    node.items = node.items.map(|child| copy(from, child, to, copied));
    node.additional_properties = node
        .additional_properties
        .map(|child| copy(from, child, to, copied));
    to.nodes[new] = node;
    new
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::ListType;

    #[test]
    fn builds_structure_and_extensions() {
        let props = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "format": "int64"},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "items": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "properties": {"name": {"type": "string"}}}
                        },
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "closed": {"type": "object"},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "nullable": true}
                    }
                }
            }
        });
        let mut schemas = Schemas::default();
        let root = from_crd_schema(&mut schemas, &props);
        let root = schemas.get(root);
        let spec = root.field("spec").expect("spec");
        assert_eq!(spec.node().required, ["size"]);
        let cases: &[(&str, Type)] = &[
            ("size", Type::Integer),
            ("mode", Type::String),
            ("port", Type::IntOrString),
            ("labels", Type::Object),
            ("items", Type::Array),
            ("free", Type::Object),
            ("template", Type::Object),
        ];
        for (field, ty) in cases {
            assert_eq!(spec.field(field).map(|f| f.node().ty), Some(*ty), "{field}");
        }
        assert_eq!(
            spec.field("mode").map(|m| m.node().enum_values.len()),
            Some(2)
        );
        assert!(
            spec.field("labels")
                .and_then(|l| l.field("anything"))
                .is_some()
        );
        let items = spec.field("items").expect("items");
        assert_eq!(items.list_type(), ListType::Map(vec!["name".into()]));
        assert!(items.items().and_then(|i| i.field("name")).is_some());
        assert!(
            spec.field("free")
                .is_some_and(|f| f.node().preserve_unknown_fields)
        );
        assert!(
            spec.field("closed")
                .is_some_and(|f| !f.node().preserve_unknown_fields)
        );
        let template = spec.field("template").expect("template");
        assert!(template.node().nullable && template.node().embedded_resource);
        for resource in [root, template] {
            let meta = resource.field("metadata").expect("metadata");
            assert!(meta.field("labels").is_some() && meta.field("ownerReferences").is_some());
            assert_eq!(
                resource.field("kind").map(|k| k.node().ty),
                Some(Type::String)
            );
        }
    }
}
