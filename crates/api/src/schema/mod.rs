//! Structural schemas of every served kind: the one source for OpenAPI, type and field
//! validation, pruning, and the list semantics that patches and server-side apply need.
//!
//! Built-in kinds get their schema from the `k8s-openapi` types (see `builtin`); custom
//! resources from their CRD's `openAPIV3Schema` (see `crd`). Both land in a `Schemas` arena so
//! recursive schemas (JSONSchemaProps) need no reference counting.

use std::collections::BTreeMap;

mod builtin;
mod convert;
pub mod crd;
pub mod openapi;
mod patch_meta;
pub mod validate;

pub use builtin::builtin;
pub use convert::QUANTITY_FORMAT;

pub type NodeId = usize;

/// What JSON type a node accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    /// `x-kubernetes-int-or-string`: an integer or a string.
    IntOrString,
    /// No constraint (free-form, e.g. RawExtension, JSON).
    #[default]
    Any,
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListType {
    #[default]
    Atomic,
    Set,
    /// Items are objects identified by these keys (`x-kubernetes-list-map-keys`).
    Map(Vec<String>),
}

/// One schema node.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub ty: Type,
    /// Object fields by JSON name.
    pub properties: BTreeMap<String, NodeId>,
    pub required: Vec<String>,
    /// Array item schema.
    pub items: Option<NodeId>,
    /// Map value schema (`additionalProperties`), for objects used as maps.
    pub additional_properties: Option<NodeId>,
    /// `x-kubernetes-preserve-unknown-fields` (or a free-form object): unknown fields are kept.
    pub preserve_unknown_fields: bool,
    /// `x-kubernetes-embedded-resource`.
    pub embedded_resource: bool,
    pub nullable: bool,
    pub format: Option<String>,
    pub enum_values: Vec<serde_json::Value>,
    /// `x-kubernetes-list-type` (lists only); `None` when the schema says nothing.
    pub list_type: Option<ListType>,
    /// `x-kubernetes-map-type: atomic` (objects only).
    pub map_atomic: bool,
    /// `x-kubernetes-patch-strategy`, e.g. "merge", "retainKeys", "merge,retainKeys", "replace".
    pub patch_strategy: Option<String>,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: Option<String>,
}

/// An arena of nodes plus the root node of each kind.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    pub nodes: Vec<Node>,
    /// Root node per "group/version/Kind" (core group: "/v1/Pod"... see `gvk_key`).
    pub roots: BTreeMap<String, NodeId>,
}

/// The key of a kind in `Schemas::roots`: `group/version/Kind` with an empty group for core.
pub fn gvk_key(group: &str, version: &str, kind: &str) -> String {
    format!("{group}/{version}/{kind}")
}

impl Schemas {
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn root(&self, group: &str, version: &str, kind: &str) -> Option<SchemaRef<'_>> {
        let id = *self.roots.get(&gvk_key(group, version, kind))?;
        Some(SchemaRef { schemas: self, id })
    }

    pub fn get(&self, id: NodeId) -> SchemaRef<'_> {
        SchemaRef { schemas: self, id }
    }
}

/// A cursor into a `Schemas` arena: what patch, apply and validation code walks with.
#[derive(Debug, Clone, Copy)]
pub struct SchemaRef<'a> {
    pub schemas: &'a Schemas,
    pub id: NodeId,
}

impl<'a> SchemaRef<'a> {
    pub fn node(&self) -> &'a Node {
        &self.schemas.nodes[self.id]
    }

    /// The schema of object field `name`, or of a map value when the object is a map.
    pub fn field(&self, name: &str) -> Option<SchemaRef<'a>> {
        let node = self.node();
        node.properties
            .get(name)
            .or(node.additional_properties.as_ref())
            .map(|&id| SchemaRef {
                schemas: self.schemas,
                id,
            })
    }

    /// The schema of array items.
    pub fn items(&self) -> Option<SchemaRef<'a>> {
        self.node().items.map(|id| SchemaRef {
            schemas: self.schemas,
            id,
        })
    }

    /// The strategic-merge-patch merge key of this list, when it merges by key.
    pub fn patch_merge_key(&self) -> Option<&'a str> {
        self.node().patch_merge_key.as_deref()
    }

    /// Whether the strategic merge patch strategy of this field includes `strategy`.
    pub fn has_patch_strategy(&self, strategy: &str) -> bool {
        self.node()
            .patch_strategy
            .as_deref()
            .is_some_and(|s| s.split(',').any(|p| p == strategy))
    }

    /// The server-side-apply list semantics, defaulting to atomic.
    pub fn list_type(&self) -> ListType {
        self.node().list_type.clone().unwrap_or_default()
    }
}
