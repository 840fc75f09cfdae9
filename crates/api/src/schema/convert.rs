//! Turns OpenAPI v3 schema JSON (built-in definitions or a CRD's JSONSchemaProps) into arena
//! nodes, resolving `$ref`s by definition name so recursive schemas become cycles of ids.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{ListType, Node, NodeId, Schemas, Type};

/// The Kubernetes extensions a property can put on top of a referenced definition.
#[derive(Debug, Clone, Default)]
struct Overlay {
    list_type: Option<ListType>,
    /// `x-kubernetes-map-type`: a property may make an atomic struct granular again.
    map_atomic: Option<bool>,
    patch_strategy: Option<String>,
    patch_merge_key: Option<String>,
    nullable: bool,
}

impl Overlay {
    fn read(obj: &Map<String, Value>) -> Overlay {
        let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
        Overlay {
            list_type: list_type(obj),
            map_atomic: obj
                .get("x-kubernetes-map-type")
                .and_then(Value::as_str)
                .map(|t| t == "atomic"),
            patch_strategy: text("x-kubernetes-patch-strategy"),
            patch_merge_key: text("x-kubernetes-patch-merge-key"),
            nullable: flag(obj, "nullable"),
        }
    }

    fn is_empty(&self) -> bool {
        self.list_type.is_none()
            && self.map_atomic.is_none()
            && self.patch_strategy.is_none()
            && self.patch_merge_key.is_none()
            && !self.nullable
    }

    fn apply(self, node: &mut Node) {
        if self.list_type.is_some() {
            node.list_type = self.list_type;
        }
        if let Some(atomic) = self.map_atomic {
            node.map_atomic = atomic;
        }
        if self.patch_strategy.is_some() {
            node.patch_strategy = self.patch_strategy;
        }
        if self.patch_merge_key.is_some() {
            node.patch_merge_key = self.patch_merge_key;
        }
        node.nullable |= self.nullable;
    }
}

fn flag(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn list_type(obj: &Map<String, Value>) -> Option<ListType> {
    Some(match obj.get("x-kubernetes-list-type")?.as_str()? {
        "set" => ListType::Set,
        "map" => ListType::Map(
            obj.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    })
}

/// The type a `oneOf` of plain types stands for: upstream writes IntOrString as
/// integer-or-string and Quantity as string-or-number.
fn one_of_type(obj: &Map<String, Value>) -> Option<(Type, Option<&'static str>)> {
    let mut types: Vec<&str> = obj
        .get("oneOf")?
        .as_array()?
        .iter()
        .filter_map(|s| s.get("type").and_then(Value::as_str))
        .collect();
    types.sort_unstable();
    match types.as_slice() {
        ["integer", "string"] => Some((Type::IntOrString, None)),
        ["number", "string"] => Some((Type::IntOrString, Some(QUANTITY_FORMAT))),
        _ => None,
    }
}

/// The `format` a Quantity node carries: an int-or-string that also takes fractional numbers.
pub const QUANTITY_FORMAT: &str = "quantity";

pub(crate) struct Converter<'a> {
    /// Definitions `$ref`s point into; empty for CRD schemas, which have no refs.
    defs: Option<&'a Map<String, Value>>,
    memo: HashMap<String, NodeId>,
    /// Go decodes a property-less object of a built-in kind (RawExtension, FieldsV1...) as
    /// arbitrary JSON, whereas in a CRD such an object prunes every field.
    free_form_preserves: bool,
    /// Nodes that copy a definition plus a property's overlay, filled once every definition
    /// is complete (a recursive definition may still be under construction when referenced).
    pending: Vec<(NodeId, NodeId, Overlay)>,
}

impl<'a> Converter<'a> {
    pub(crate) fn builtin(defs: &'a Map<String, Value>) -> Self {
        Converter {
            defs: Some(defs),
            memo: HashMap::new(),
            free_form_preserves: true,
            pending: Vec::new(),
        }
    }

    pub(crate) fn custom() -> Self {
        Converter {
            defs: None,
            memo: HashMap::new(),
            free_form_preserves: false,
            pending: Vec::new(),
        }
    }

    /// The node of a named definition (an unconstrained node when there is none).
    pub(crate) fn definition(&mut self, schemas: &mut Schemas, name: &str) -> NodeId {
        if let Some(&id) = self.memo.get(name) {
            return id;
        }
        let id = schemas.add(Node::default());
        self.memo.insert(name.to_string(), id);
        match self.defs.and_then(|defs| defs.get(name)) {
            Some(def) => match self.alias(schemas, def) {
                Some((target, overlay)) => self.pending.push((id, target, overlay)),
                None => schemas.nodes[id] = self.build(schemas, def),
            },
            None => schemas.nodes[id].preserve_unknown_fields = true,
        }
        id
    }

    pub(crate) fn convert(&mut self, schemas: &mut Schemas, schema: &Value) -> NodeId {
        match self.alias(schemas, schema) {
            Some((target, overlay)) if overlay.is_empty() => target,
            Some((target, overlay)) => {
                let id = schemas.add(Node::default());
                self.pending.push((id, target, overlay));
                id
            }
            None => {
                let node = self.build(schemas, schema);
                schemas.add(node)
            }
        }
    }

    /// Completes the nodes that copy definitions; call once after the last conversion.
    pub(crate) fn finish(&mut self, schemas: &mut Schemas) {
        for (id, target, overlay) in self.pending.drain(..) {
            let mut node = schemas.nodes[target].clone();
            overlay.apply(&mut node);
            schemas.nodes[id] = node;
        }
    }

    /// A schema that only names another (`$ref`, or upstream's `allOf: [{$ref}]` wrapping that
    /// carries a description and extensions): the target and what the wrapper adds.
    fn alias(&mut self, schemas: &mut Schemas, schema: &Value) -> Option<(NodeId, Overlay)> {
        let obj = schema.as_object()?;
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            self.defs?;
            let name = reference.rsplit('/').next().unwrap_or(reference);
            return Some((self.definition(schemas, name), Overlay::read(obj)));
        }
        let structural = ["type", "properties", "items", "additionalProperties"];
        match obj
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([only]) if !structural.iter().any(|k| obj.contains_key(*k)) => {
                let target = self.convert(schemas, only);
                Some((target, Overlay::read(obj)))
            }
            _ => None,
        }
    }

    fn build(&mut self, schemas: &mut Schemas, schema: &Value) -> Node {
        let Some(obj) = schema.as_object() else {
            // A boolean schema: `true` allows anything.
            return Node {
                preserve_unknown_fields: true,
                ..Node::default()
            };
        };
        let mut node = Node {
            ty: match obj.get("type").and_then(Value::as_str) {
                Some("object") => Type::Object,
                Some("array") => Type::Array,
                Some("string") => Type::String,
                Some("integer") => Type::Integer,
                Some("number") => Type::Number,
                Some("boolean") => Type::Boolean,
                _ if obj.contains_key("properties") => Type::Object,
                _ => Type::Any,
            },
            format: obj
                .get("format")
                .and_then(Value::as_str)
                .map(str::to_string),
            embedded_resource: flag(obj, "x-kubernetes-embedded-resource"),
            enum_values: obj
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            required: obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            ..Node::default()
        };
        if flag(obj, "x-kubernetes-int-or-string") {
            node.ty = Type::IntOrString;
        } else if let Some((ty, format)) = one_of_type(obj) {
            node.ty = ty;
            node.format = format.map(str::to_string).or(node.format);
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let id = self.convert(schemas, prop);
                node.properties.insert(name.clone(), id);
            }
        }
        if let Some(items) = obj.get("items") {
            node.items = Some(self.convert(schemas, items));
        }
        node.additional_properties = match obj.get("additionalProperties") {
            Some(Value::Bool(true)) => Some(schemas.add(Node {
                preserve_unknown_fields: true,
                ..Node::default()
            })),
            Some(additional @ Value::Object(_)) => Some(self.convert(schemas, additional)),
            _ => None,
        };
        let free_form = node.ty == Type::Object
            && node.properties.is_empty()
            && node.additional_properties.is_none();
        node.preserve_unknown_fields = flag(obj, "x-kubernetes-preserve-unknown-fields")
            || (self.free_form_preserves && free_form)
            || (node.ty == Type::Any && self.free_form_preserves);
        Overlay::read(obj).apply(&mut node);
        node
    }
}
