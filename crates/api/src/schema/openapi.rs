//! OpenAPI v3 documents as kube-apiserver serves them under `/openapi/v3`: one per
//! group-version, with the operations kubectl reads (`x-kubernetes-group-version-kind`, the
//! `fieldValidation` parameter of PATCH) and the full schemas `kubectl explain` renders.
//!
//! Built-in documents are built together on first use and kept serialized with their hash;
//! custom resource documents are built from their CRDs on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use super::builtin::{Definitions, Root};
use crate::registry;

const REF_PREFIX: &str = "#/components/schemas/";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

/// A serialized document and the hash clients pin it by (`?hash=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub bytes: Arc<[u8]>,
    pub hash: String,
}

impl Document {
    pub fn new(value: &Value) -> Document {
        let bytes: Arc<[u8]> = serde_json::to_vec(value).unwrap_or_default().into();
        Document {
            hash: hash(&bytes),
            bytes,
        }
    }
}

/// A stable content hash (FNV-1a, 128 bits) in upper-case hex, as the `?hash=` of a document.
pub fn hash(bytes: &[u8]) -> String {
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let digest = bytes
        .iter()
        .fold(0x6c62272e07bb014262b821756295c58d_u128, |h, &b| {
            (h ^ u128::from(b)).wrapping_mul(PRIME)
        });
    format!("{digest:032X}")
}

/// The path of a group-version's document below `/openapi/v3/`: `api/v1` or `apis/apps/v1`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The built-in group-versions that have documents, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    registry::group_versions()
}

/// The serialized document of a built-in group-version.
pub fn document_bytes(group: &str, version: &str) -> Option<Document> {
    cache().docs.get(&gv_path(group, version)).cloned()
}

/// The document of a built-in group-version as JSON.
pub fn openapi_v3_document(group: &str, version: &str) -> Option<Value> {
    serde_json::from_slice(&document_bytes(group, version)?.bytes).ok()
}

/// The `/openapi/v3` index: every built-in group-version plus `extra` (path, hash) pairs for
/// custom resource group-versions.
pub fn openapi_v3_paths(extra: &[(String, String)]) -> Value {
    let builtin = cache()
        .docs
        .iter()
        .map(|(path, doc)| (path.as_str(), doc.hash.as_str()));
    let extra = extra
        .iter()
        .map(|(path, hash)| (path.as_str(), hash.as_str()));
    let paths: Map<String, Value> = builtin
        .chain(extra)
        .map(|(path, hash)| {
            (
                path.to_string(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") }),
            )
        })
        .collect();
    json!({ "paths": paths })
}

/// The document of one custom resource version: the group-version document when this CRD is
/// the only one in its group-version. `None` when the CRD does not serve `version`.
pub fn openapi_v3_for_crd(crd: &Value, version: &str) -> Option<Value> {
    let group = crd.pointer("/spec/group")?.as_str()?;
    let crd_version = served_version(crd, version)?;
    let mut doc = Builder::new(group, version);
    doc.custom_resource(crd, crd_version)?;
    Some(doc.finish(&cache().shared))
}

/// The document of a custom resource group-version: every CRD of `crds` serving it.
pub fn openapi_v3_for_crds<'a>(
    group: &str,
    version: &str,
    crds: impl IntoIterator<Item = &'a Value>,
) -> Value {
    let mut doc = Builder::new(group, version);
    for crd in crds {
        if crd.pointer("/spec/group").and_then(Value::as_str) == Some(group)
            && let Some(crd_version) = served_version(crd, version)
        {
            doc.custom_resource(crd, crd_version);
        }
    }
    doc.finish(&cache().shared)
}

fn served_version<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?.as_array()?.iter().find(|v| {
        v.get("name").and_then(Value::as_str) == Some(version)
            && v.get("served").and_then(Value::as_bool) != Some(false)
    })
}

struct Cache {
    /// By `gv_path`.
    docs: BTreeMap<String, Document>,
    /// The definitions custom resource documents reference (ObjectMeta, Status, Scale...).
    shared: Map<String, Value>,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let Definitions { roots, mut schemas } = Definitions::generate();
        let mut gvks: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for root in &roots {
            gvks.entry(root.definition.as_str()).or_default().push(gvk(
                root.group,
                root.version,
                root.kind,
            ));
        }
        for (name, kinds) in gvks {
            if let Some(Value::Object(def)) = schemas.get_mut(name) {
                def.insert("x-kubernetes-group-version-kind".into(), kinds.into());
            }
        }
        let mut docs = BTreeMap::new();
        for (group, version) in group_versions() {
            let mut doc = Builder::new(group, version);
            for info in registry::builtin()
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                doc.builtin_resource(&roots, info);
            }
            docs.insert(
                gv_path(group, version),
                Document::new(&doc.finish(&schemas)),
            );
        }
        let mut shared = Map::new();
        let names = ["ObjectMeta", "ListMeta", "Status", "DeleteOptions", "Patch"]
            .map(|n| format!("{META}.{n}"));
        copy_closure(
            &schemas,
            names.into_iter().chain([SCALE.to_string()]),
            &mut shared,
        );
        Cache { docs, shared }
    })
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("{REF_PREFIX}{name}") })
}

/// A reference with a description, wrapped in `allOf` as upstream writes it.
fn described_reference(name: &str, description: &str) -> Value {
    json!({ "allOf": [reference(name)], "description": description })
}

/// Adds the named definitions of `from` and everything they reference to `to`.
fn copy_closure(
    from: &Map<String, Value>,
    names: impl IntoIterator<Item = String>,
    to: &mut Map<String, Value>,
) {
    let mut queue: Vec<String> = names.into_iter().collect();
    while let Some(name) = queue.pop() {
        if to.contains_key(&name) {
            continue;
        }
        let Some(def) = from.get(&name) else { continue };
        collect_refs(def, &mut queue);
        to.insert(name, def.clone());
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.push(name.to_string());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const OBJECT_META_DOC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_META_DOC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The `<Kind>List` schema upstream serves beside each listable kind.
fn list_schema(item: &str, group: &str, version: &str, list_kind: &str, kind: &str) -> Value {
    json!({
        "description": format!("{list_kind} is a list of {kind}"),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": { "description": API_VERSION_DOC, "type": "string" },
            "items": {
                "description": format!("List of {kind}s"),
                "type": "array",
                "items": { "allOf": [reference(item)], "default": {} },
            },
            "kind": { "description": KIND_DOC, "type": "string" },
            "metadata": described_reference(&format!("{META}.ListMeta"), LIST_META_DOC),
        },
        "x-kubernetes-group-version-kind": [gvk(group, version, list_kind)],
    })
}

/// One resource (or subresource) endpoint to document.
struct Endpoint<'a> {
    /// The kind of the request and response bodies.
    kind: (&'a str, &'a str, &'a str),
    /// The kind of the resource, which names the operations of its subresources too.
    resource_kind: &'a str,
    definition: &'a str,
    plural: &'a str,
    namespaced: bool,
    verbs: &'a [&'a str],
    /// The subresource name, or `None` for the resource itself.
    sub: Option<&'a str>,
    list_definition: Option<&'a str>,
}

struct Builder<'a> {
    group: &'a str,
    version: &'a str,
    paths: Map<String, Value>,
    components: Map<String, Value>,
    wanted: BTreeSet<String>,
}

impl<'a> Builder<'a> {
    fn new(group: &'a str, version: &'a str) -> Self {
        let wanted = ["Status", "DeleteOptions", "Patch"]
            .map(|n| format!("{META}.{n}"))
            .into();
        Builder {
            group,
            version,
            paths: Map::new(),
            components: Map::new(),
            wanted,
        }
    }

    fn builtin_resource(&mut self, roots: &[Root], info: &registry::ResourceInfo) {
        let find = |group: &str, version: &str, kind: &str| {
            roots
                .iter()
                .find(|r| r.group == group && r.version == version && r.kind == kind)
                .map(|r| r.definition.clone())
        };
        let Some(definition) = find(info.group, info.version, info.kind) else {
            return;
        };
        let listable = info.verbs.contains(&"list");
        let list_definition = format!("{definition}List");
        if listable {
            let list_kind = format!("{}List", info.kind);
            let list = list_schema(&definition, info.group, info.version, &list_kind, info.kind);
            self.components.insert(list_definition.clone(), list);
        }
        self.endpoint(&Endpoint {
            kind: (info.group, info.version, info.kind),
            resource_kind: info.kind,
            definition: &definition,
            plural: info.plural,
            namespaced: info.namespaced,
            verbs: info.verbs,
            sub: None,
            list_definition: listable.then_some(list_definition.as_str()),
        });
        self.wanted.insert(definition);
        // Read-only subresources (log) answer with something other than their kind's schema.
        let with_bodies = info
            .subresources
            .iter()
            .filter(|s| s.verbs.iter().any(|&v| v != "get"));
        for sub in with_bodies {
            let Some(sub_definition) = find(sub.group, sub.version, sub.kind) else {
                continue;
            };
            self.endpoint(&Endpoint {
                kind: (sub.group, sub.version, sub.kind),
                resource_kind: info.kind,
                definition: &sub_definition,
                plural: info.plural,
                namespaced: info.namespaced,
                verbs: sub.verbs,
                sub: Some(sub.name),
                list_definition: None,
            });
            self.wanted.insert(sub_definition);
        }
    }

    /// Adds a custom resource version's schema and endpoints; `None` when the CRD is malformed.
    fn custom_resource(&mut self, crd: &Value, crd_version: &Value) -> Option<()> {
        let names = crd.pointer("/spec/names")?;
        let kind = names.get("kind")?.as_str()?;
        let plural = names.get("plural")?.as_str()?;
        let list_kind = names
            .get("listKind")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{kind}List"), str::to_string);
        let namespaced = crd.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster");
        let reversed: Vec<&str> = self.group.split('.').rev().collect();
        let definition = format!("{}.{}.{kind}", reversed.join("."), self.version);
        let list_definition = format!("{}.{}.{list_kind}", reversed.join("."), self.version);

        let mut schema = crd_version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true }),
            );
        let obj = schema.as_object_mut()?;
        let properties = obj
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()?;
        properties.insert(
            "apiVersion".into(),
            json!({ "description": API_VERSION_DOC, "type": "string" }),
        );
        properties.insert(
            "kind".into(),
            json!({ "description": KIND_DOC, "type": "string" }),
        );
        properties.insert(
            "metadata".into(),
            described_reference(&format!("{META}.ObjectMeta"), OBJECT_META_DOC),
        );
        obj.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk(self.group, self.version, kind)]),
        );
        self.components.insert(definition.clone(), schema);
        let list = list_schema(&definition, self.group, self.version, &list_kind, kind);
        self.components.insert(list_definition.clone(), list);

        let (group, version) = (self.group, self.version);
        self.endpoint(&Endpoint {
            kind: (group, version, kind),
            resource_kind: kind,
            definition: &definition,
            plural,
            namespaced,
            verbs: registry::ALL_VERBS,
            sub: None,
            list_definition: Some(&list_definition),
        });
        let subresources = crd_version.get("subresources");
        if subresources.and_then(|s| s.get("status")).is_some() {
            self.endpoint(&Endpoint {
                kind: (group, version, kind),
                resource_kind: kind,
                definition: &definition,
                plural,
                namespaced,
                verbs: &["get", "patch", "update"],
                sub: Some("status"),
                list_definition: None,
            });
        }
        if subresources.and_then(|s| s.get("scale")).is_some() {
            self.endpoint(&Endpoint {
                kind: ("autoscaling", "v1", "Scale"),
                resource_kind: kind,
                definition: SCALE,
                plural,
                namespaced,
                verbs: &["get", "patch", "update"],
                sub: Some("scale"),
                list_definition: None,
            });
            self.wanted.insert(SCALE.into());
        }
        Some(())
    }

    fn endpoint(&mut self, e: &Endpoint<'_>) {
        let root = format!("/{}", gv_path(self.group, self.version));
        let collection = if e.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}", e.plural)
        } else {
            format!("{root}/{}", e.plural)
        };
        let item = match e.sub {
            Some(sub) => format!("{collection}/{{name}}/{sub}"),
            None => format!("{collection}/{{name}}"),
        };
        let names = OperationNames::new(self.group, self.version, e);
        let mut on_collection = Map::new();
        let mut on_item = Map::new();
        for &verb in e.verbs {
            match (verb, e.sub) {
                ("list", None) => {
                    let list = e.list_definition.unwrap_or(e.definition);
                    on_collection.insert(
                        "get".into(),
                        names.op("list", "list", None, list, LIST_PARAMS),
                    );
                }
                ("create", None) => {
                    on_collection.insert(
                        "post".into(),
                        names.op(
                            "create",
                            "post",
                            Some(e.definition),
                            e.definition,
                            WRITE_PARAMS,
                        ),
                    );
                }
                ("create", Some(_)) => {
                    on_item.insert(
                        "post".into(),
                        names.op(
                            "create",
                            "post",
                            Some(e.definition),
                            e.definition,
                            WRITE_PARAMS,
                        ),
                    );
                }
                ("deletecollection", None) => {
                    let delete = format!("{META}.DeleteOptions");
                    let op = names.op(
                        "deletecollection",
                        "deletecollection",
                        Some(&delete),
                        &format!("{META}.Status"),
                        DELETE_PARAMS,
                    );
                    on_collection.insert("delete".into(), op);
                }
                ("get", _) => {
                    on_item.insert(
                        "get".into(),
                        names.op("read", "get", None, e.definition, &[]),
                    );
                }
                ("update", _) => {
                    on_item.insert(
                        "put".into(),
                        names.op(
                            "replace",
                            "put",
                            Some(e.definition),
                            e.definition,
                            WRITE_PARAMS,
                        ),
                    );
                }
                ("patch", _) => {
                    let patch = format!("{META}.Patch");
                    on_item.insert(
                        "patch".into(),
                        names.op("patch", "patch", Some(&patch), e.definition, PATCH_PARAMS),
                    );
                }
                ("delete", None) => {
                    let delete = format!("{META}.DeleteOptions");
                    let op = names.op(
                        "delete",
                        "delete",
                        Some(&delete),
                        &format!("{META}.Status"),
                        DELETE_PARAMS,
                    );
                    on_item.insert("delete".into(), op);
                }
                _ => {}
            }
        }
        let namespace = e.namespaced.then(|| {
            path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            )
        });
        if !on_collection.is_empty() {
            let params: Vec<Value> = namespace.iter().cloned().chain([pretty()]).collect();
            on_collection.insert("parameters".into(), params.into());
            self.paths.insert(collection, on_collection.into());
        }
        if !on_item.is_empty() {
            let name = path_param("name", &format!("name of the {}", e.kind.2));
            let params: Vec<Value> = [name]
                .into_iter()
                .chain(namespace)
                .chain([pretty()])
                .collect();
            on_item.insert("parameters".into(), params.into());
            self.paths.insert(item, on_item.into());
        }
    }

    fn finish(mut self, definitions: &Map<String, Value>) -> Value {
        let referenced: Vec<String> = {
            let mut refs = Vec::new();
            self.components
                .values()
                .for_each(|schema| collect_refs(schema, &mut refs));
            refs.into_iter()
                .chain(std::mem::take(&mut self.wanted))
                .collect()
        };
        copy_closure(definitions, referenced, &mut self.components);
        json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": "v1.33.0" },
            "paths": self.paths,
            "components": { "schemas": self.components },
        })
    }
}

/// Upstream's operation ids and tags: `createAppsV1NamespacedDeployment`, `apps_v1`.
struct OperationNames {
    group_version: String,
    tag: String,
    target: String,
    gvk: Value,
}

impl OperationNames {
    fn new(group: &str, version: &str, e: &Endpoint<'_>) -> Self {
        let group_camel: String = if group.is_empty() {
            "Core".into()
        } else {
            group
                .trim_end_matches(".k8s.io")
                .split('.')
                .map(capitalize)
                .collect()
        };
        let mut tag = group_camel.clone();
        if let Some(first) = tag.get_mut(..1) {
            first.make_ascii_lowercase();
        }
        let scope = if e.namespaced { "Namespaced" } else { "" };
        OperationNames {
            group_version: format!("{group_camel}{}", capitalize(version)),
            tag: format!("{tag}_{version}"),
            target: format!(
                "{scope}{}{}",
                e.resource_kind,
                e.sub.map(capitalize).unwrap_or_default()
            ),
            gvk: gvk(e.kind.0, e.kind.1, e.kind.2),
        }
    }

    fn op(
        &self,
        verb: &str,
        action: &str,
        body: Option<&str>,
        response: &str,
        params: &[(&str, &str, &str)],
    ) -> Value {
        let id = match verb {
            "deletecollection" => format!("delete{}Collection{}", self.group_version, self.target),
            _ => format!("{verb}{}{}", self.group_version, self.target),
        };
        let content = json!({ "application/json": { "schema": reference(response) } });
        let mut op = json!({
            "description": format!("{verb} {}", self.gvk["kind"].as_str().unwrap_or_default()),
            "operationId": id,
            "tags": [self.tag],
            "responses": {
                "200": { "description": "OK", "content": content },
                "401": { "description": "Unauthorized" },
            },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if !params.is_empty() {
            op["parameters"] = params
                .iter()
                .map(|&(name, ty, description)| query_param(name, ty, description))
                .collect();
        }
        if let Some(body) = body {
            let types: &[&str] = if action == "patch" {
                &[
                    "application/apply-patch+yaml",
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                ]
            } else {
                &["*/*"]
            };
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({ "schema": reference(body) })))
                .collect();
            op["requestBody"] = json!({ "content": content, "required": action != "delete" && action != "deletecollection" });
        }
        if matches!(action, "post" | "put" | "patch") {
            op["responses"]["201"] = json!({ "description": "Created", "content": content });
        }
        op
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn query_param(name: &str, ty: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "description": description, "schema": { "type": ty, "uniqueItems": true } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "description": description, "required": true, "schema": { "type": "string", "uniqueItems": true } })
}

fn pretty() -> Value {
    query_param(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed.",
    )
}

const DRY_RUN: (&str, &str, &str) = (
    "dryRun",
    "string",
    "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
);
const FIELD_MANAGER: (&str, &str, &str) = (
    "fieldManager",
    "string",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
);
const FIELD_VALIDATION: (&str, &str, &str) = (
    "fieldValidation",
    "string",
    "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: unknown fields are silently dropped. - Warn: a warning is sent for each unknown or duplicate field. - Strict: the request fails with a BadRequest error if any unknown or duplicate fields are present.",
);
const WRITE_PARAMS: &[(&str, &str, &str)] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION];
const PATCH_PARAMS: &[(&str, &str, &str)] = &[
    DRY_RUN,
    FIELD_MANAGER,
    FIELD_VALIDATION,
    (
        "force",
        "boolean",
        "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
    ),
];
const LIST_PARAMS: &[(&str, &str, &str)] = &[
    (
        "allowWatchBookmarks",
        "boolean",
        "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
    ),
    (
        "continue",
        "string",
        "The continue option should be set when retrieving more results from the server.",
    ),
    (
        "fieldSelector",
        "string",
        "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
    ),
    (
        "labelSelector",
        "string",
        "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
    ),
    (
        "limit",
        "integer",
        "limit is a maximum number of responses to return for a list call.",
    ),
    (
        "resourceVersion",
        "string",
        "resourceVersion sets a constraint on what resource versions a request may be served from.",
    ),
    (
        "resourceVersionMatch",
        "string",
        "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    ),
    (
        "sendInitialEvents",
        "boolean",
        "`sendInitialEvents=true` may be set together with `watch=true`.",
    ),
    (
        "timeoutSeconds",
        "integer",
        "Timeout for the list/watch call.",
    ),
    (
        "watch",
        "boolean",
        "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
    ),
];
const DELETE_PARAMS: &[(&str, &str, &str)] = &[
    DRY_RUN,
    (
        "gracePeriodSeconds",
        "integer",
        "The duration in seconds before the object should be deleted.",
    ),
    (
        "propagationPolicy",
        "string",
        "Whether and how garbage collection will be performed: 'Orphan', 'Background' or 'Foreground'.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn dangling_refs(doc: &Value) -> Vec<String> {
        let mut refs = Vec::new();
        collect_refs(doc, &mut refs);
        let schemas = &doc["components"]["schemas"];
        refs.into_iter()
            .filter(|r| schemas.get(r).is_none())
            .collect()
    }

    /// The PATCH operation kubectl's field validation check looks for.
    fn patch_supports_field_validation(doc: &Value, gvk: &Value) -> bool {
        doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(_, item)| {
                item["patch"]["x-kubernetes-group-version-kind"] == *gvk
                    && item["patch"]["parameters"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
                    })
            })
    }

    #[test]
    fn every_builtin_document_is_complete() {
        let started = std::time::Instant::now();
        let total: usize = group_versions()
            .iter()
            .filter_map(|&(g, v)| document_bytes(g, v))
            .map(|d| d.bytes.len())
            .sum();
        eprintln!("openapi documents: {:?}, {total} bytes", started.elapsed());
        for (group, version) in group_versions() {
            let doc = openapi_v3_document(group, version)
                .unwrap_or_else(|| panic!("no document for {group}/{version}"));
            assert_eq!(
                dangling_refs(&doc),
                Vec::<String>::new(),
                "{group}/{version}"
            );
            for info in registry::builtin()
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                let kind = gvk(group, version, info.kind);
                let schemas = doc["components"]["schemas"].as_object().expect("schemas");
                let has_kind = schemas.values().any(|s| {
                    s["x-kubernetes-group-version-kind"]
                        .as_array()
                        .is_some_and(|gvks| gvks.contains(&kind))
                });
                assert!(has_kind, "{group}/{version} {}", info.kind);
                if info.verbs.contains(&"patch") {
                    assert!(
                        patch_supports_field_validation(&doc, &kind),
                        "{group}/{version} {}",
                        info.kind
                    );
                }
            }
        }
        let a = document_bytes("apps", "v1").expect("apps/v1");
        assert_eq!(a.hash, hash(&a.bytes));
        assert_eq!(a.hash.len(), 32);
    }

    #[test]
    fn apps_v1_document_explains_deployments() {
        let doc = openapi_v3_document("apps", "v1").expect("apps/v1");
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        assert!(
            deployment.get("required").is_none(),
            "metadata is optional upstream"
        );
        assert_eq!(
            deployment["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let strategy = &schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
        assert_eq!(
            strategy["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"
        );
        assert!(
            strategy["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert!(
            schemas["io.k8s.api.apps.v1.DeploymentStrategy"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("replace existing pods"))
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
            "int-or-string"
        );

        let list = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"];
        assert_eq!(
            list["get"]["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        assert_eq!(list["get"]["operationId"], "listAppsV1NamespacedDeployment");
        let scale =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
        assert_eq!(scale["operationId"], "patchAppsV1NamespacedDeploymentScale");
        assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
        assert!(schemas.get("io.k8s.api.apps.v1.DeploymentList").is_some());
        let core = openapi_v3_document("", "v1").expect("core/v1");
        assert!(core["paths"].get("/api/v1/namespaces/{name}").is_some());
        assert_eq!(
            core["paths"]["/api/v1/nodes"]["get"]["operationId"],
            "listCoreV1Node"
        );
    }

    #[test]
    fn custom_resource_document() {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "spec": {
                "group": "stable.example.com",
                "names": {"kind": "CronTab", "plural": "crontabs", "listKind": "CronTabList"},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}, "scale": {}},
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "description": "the spec"}}}}},
                    {"name": "v2", "served": false, "storage": false}
                ]
            }
        });
        assert!(openapi_v3_for_crd(&crd, "v2").is_none());
        let doc = openapi_v3_for_crd(&crd, "v1").expect("v1 document");
        assert_eq!(dangling_refs(&doc), Vec::<String>::new());
        let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
        let kind = json!({"group": "stable.example.com", "kind": "CronTab", "version": "v1"});
        assert_eq!(schema["x-kubernetes-group-version-kind"], json!([kind]));
        assert_eq!(schema["properties"]["spec"]["description"], "the spec");
        assert_eq!(
            schema["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(
            doc["components"]["schemas"]
                .get("com.example.stable.v1.CronTabList")
                .is_some()
        );
        assert!(patch_supports_field_validation(&doc, &kind));
        let paths = &doc["paths"];
        assert!(
            paths
                .get("/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}/status")
                .is_some()
        );
        assert_eq!(
            paths["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}/scale"]["get"]
                ["operationId"],
            "readStableExampleComV1NamespacedCronTabScale"
        );
    }
}
