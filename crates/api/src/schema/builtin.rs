//! Structural schemas of the built-in kinds, generated once from k8s-openapi's JSON schemas
//! plus the Kubernetes list and patch extensions those lack (see `patch_meta`).

use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::api::{
    admissionregistration::v1 as admission, apps::v1 as apps, authentication::v1 as authn,
    authorization::v1 as authz, autoscaling::v1 as autoscaling1, autoscaling::v2 as autoscaling2,
    batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination,
    core::v1 as core, discovery::v1 as discovery, events::v1 as events,
    networking::v1 as networking, node::v1 as node, policy::v1 as policy, rbac::v1 as rbac,
    scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::convert::Converter;
use super::{SchemaRef, Schemas, gvk_key, patch_meta};

/// A kind and the name of its schema definition (upstream's, e.g. `io.k8s.api.apps.v1.Deployment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub definition: String,
}

type Register = fn(&mut SchemaGenerator) -> Root;

fn res<T: Resource + JsonSchema>(generator: &mut SchemaGenerator) -> Root {
    generator.subschema_for::<T>();
    Root {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        definition: T::schema_name().into_owned(),
    }
}

fn delete_options(generator: &mut SchemaGenerator) -> Root {
    generator.subschema_for::<meta::DeleteOptions>();
    Root {
        group: "",
        version: "v1",
        kind: "DeleteOptions",
        definition: meta::DeleteOptions::schema_name().into_owned(),
    }
}

fn meta_delete_options(generator: &mut SchemaGenerator) -> Root {
    Root {
        group: "meta.k8s.io",
        ..delete_options(generator)
    }
}

/// Every kind with a schema: the served resources, the bodies of subresources and the meta
/// kinds clients send.
const KINDS: &[Register] = &[
    res::<core::Binding>,
    res::<core::ComponentStatus>,
    res::<core::ConfigMap>,
    res::<core::Endpoints>,
    res::<core::Event>,
    res::<core::LimitRange>,
    res::<core::Namespace>,
    res::<core::Node>,
    res::<core::PersistentVolume>,
    res::<core::PersistentVolumeClaim>,
    res::<core::Pod>,
    res::<core::PodTemplate>,
    res::<core::ReplicationController>,
    res::<core::ResourceQuota>,
    res::<core::Secret>,
    res::<core::Service>,
    res::<core::ServiceAccount>,
    res::<meta::Status>,
    delete_options,
    meta_delete_options,
    res::<apps::ControllerRevision>,
    res::<apps::DaemonSet>,
    res::<apps::Deployment>,
    res::<apps::ReplicaSet>,
    res::<apps::StatefulSet>,
    res::<batch::CronJob>,
    res::<batch::Job>,
    res::<autoscaling1::HorizontalPodAutoscaler>,
    res::<autoscaling1::Scale>,
    res::<autoscaling2::HorizontalPodAutoscaler>,
    res::<policy::Eviction>,
    res::<policy::PodDisruptionBudget>,
    res::<rbac::ClusterRole>,
    res::<rbac::ClusterRoleBinding>,
    res::<rbac::Role>,
    res::<rbac::RoleBinding>,
    res::<coordination::Lease>,
    res::<discovery::EndpointSlice>,
    res::<events::Event>,
    res::<networking::Ingress>,
    res::<networking::IngressClass>,
    res::<networking::NetworkPolicy>,
    res::<storage::CSIDriver>,
    res::<storage::CSINode>,
    res::<storage::CSIStorageCapacity>,
    res::<storage::StorageClass>,
    res::<storage::VolumeAttachment>,
    res::<scheduling::PriorityClass>,
    res::<node::RuntimeClass>,
    res::<certificates::CertificateSigningRequest>,
    res::<admission::MutatingWebhookConfiguration>,
    res::<admission::ValidatingAdmissionPolicy>,
    res::<admission::ValidatingAdmissionPolicyBinding>,
    res::<admission::ValidatingWebhookConfiguration>,
    res::<apiextensions::CustomResourceDefinition>,
    res::<apiregistration::APIService>,
    res::<authn::SelfSubjectReview>,
    res::<authn::TokenRequest>,
    res::<authn::TokenReview>,
    res::<authz::LocalSubjectAccessReview>,
    res::<authz::SelfSubjectAccessReview>,
    res::<authz::SelfSubjectRulesReview>,
    res::<authz::SubjectAccessReview>,
];

/// The OpenAPI v3 schema definitions of every built-in kind and everything they reference,
/// by upstream definition name, with the Kubernetes extensions added.
pub(crate) struct Definitions {
    pub roots: Vec<Root>,
    pub schemas: Map<String, Value>,
}

impl Definitions {
    /// Generated on demand rather than kept: the JSON with descriptions is several megabytes,
    /// and only the arena and the serialized documents are needed afterwards.
    pub(crate) fn generate() -> Definitions {
        let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
        let roots = KINDS
            .iter()
            .map(|register| register(&mut generator))
            .collect();
        // Referenced by the operations of every OpenAPI document.
        generator.subschema_for::<meta::ListMeta>();
        generator.subschema_for::<meta::Patch>();
        let mut schemas = generator.take_definitions(true);
        upstream_scalars(&mut schemas);
        optional_metadata(&mut schemas);
        patch_meta::apply(&mut schemas);
        Definitions { roots, schemas }
    }
}

/// Writes IntOrString, Quantity and apiextensions' JSON the way upstream's OpenAPI v3 does:
/// k8s-openapi marks the first two `x-kubernetes-int-or-string` though a Quantity may be any
/// number, and calls JSON an object though it is any JSON value.
fn upstream_scalars(schemas: &mut Map<String, Value>) {
    let forms = [
        (
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            json!({"format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}]}),
        ),
        (
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
        ),
        (
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
            json!({}),
        ),
    ];
    for (name, form) in forms {
        if let (Some(Value::Object(def)), Value::Object(form)) = (schemas.get_mut(name), form) {
            def.retain(|key, _| key == "description");
            def.extend(form);
        }
    }
}

/// Drops the `required: ["metadata"]` k8s-openapi adds for its non-optional Rust field:
/// upstream's metadata is optional everywhere (and `kubectl explain` shows the difference).
fn optional_metadata(schemas: &mut Map<String, Value>) {
    for def in schemas.values_mut().filter_map(Value::as_object_mut) {
        let emptied = match def.get_mut("required") {
            Some(Value::Array(required)) => {
                required.retain(|r| r != "metadata");
                required.is_empty()
            }
            _ => false,
        };
        if emptied {
            def.remove("required");
        }
    }
}

/// The schemas of all built-in kinds, built on first use.
pub fn builtin() -> &'static Schemas {
    static BUILTIN: OnceLock<Schemas> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let defs = Definitions::generate();
        let mut schemas = Schemas::default();
        let mut converter = Converter::builtin(&defs.schemas);
        for root in &defs.roots {
            let id = converter.definition(&mut schemas, &root.definition);
            schemas
                .roots
                .insert(gvk_key(root.group, root.version, root.kind), id);
        }
        converter.finish(&mut schemas);
        schemas
    })
}

/// The ObjectMeta schema every kind's `metadata` shares.
pub(crate) fn object_meta() -> SchemaRef<'static> {
    let schemas = builtin();
    schemas
        .root("", "v1", "ConfigMap")
        .and_then(|config_map| config_map.field("metadata"))
        .unwrap_or_else(|| schemas.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ListType, Type};

    #[test]
    fn every_kind_has_a_root_with_type_meta() {
        let started = std::time::Instant::now();
        let schemas = builtin();
        eprintln!(
            "builtin(): {:?}, {} nodes, {} roots",
            started.elapsed(),
            schemas.nodes.len(),
            schemas.roots.len()
        );
        assert_eq!(schemas.roots.len(), KINDS.len());
        for (key, &id) in &schemas.roots {
            let root = schemas.get(id);
            assert_eq!(root.node().ty, Type::Object, "{key}");
            for field in ["apiVersion", "kind"] {
                assert!(root.field(field).is_some(), "{key} lacks {field}");
            }
        }
        let registered = crate::registry::builtin();
        for info in registered {
            assert!(
                schemas.root(info.group, info.version, info.kind).is_some(),
                "no schema for {info:?}"
            );
        }
    }

    /// (kind, field path, patch strategy, merge key, list map keys)
    type PatchMeta = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static [&'static str]>,
    );

    const PATCH_META: &[PatchMeta] = &[
        (
            "/v1/Pod",
            "spec.containers",
            Some("merge"),
            Some("name"),
            Some(&["name"]),
        ),
        (
            "/v1/Pod",
            "spec.volumes",
            Some("merge,retainKeys"),
            Some("name"),
            Some(&["name"]),
        ),
        (
            "/v1/Pod",
            "spec.containers.ports",
            Some("merge"),
            Some("containerPort"),
            Some(&["containerPort", "protocol"]),
        ),
        (
            "/v1/Pod",
            "spec.containers.env",
            Some("merge"),
            Some("name"),
            Some(&["name"]),
        ),
        ("/v1/Pod", "spec.tolerations", None, None, None),
        (
            "/v1/Pod",
            "status.conditions",
            Some("merge"),
            Some("type"),
            Some(&["type"]),
        ),
        (
            "/v1/Pod",
            "metadata.ownerReferences",
            Some("merge"),
            Some("uid"),
            Some(&["uid"]),
        ),
        (
            "/v1/Service",
            "spec.ports",
            Some("merge"),
            Some("port"),
            Some(&["port", "protocol"]),
        ),
        (
            "/v1/Node",
            "status.addresses",
            Some("merge"),
            Some("type"),
            Some(&["type"]),
        ),
        (
            "apps/v1/Deployment",
            "spec.strategy",
            Some("retainKeys"),
            None,
            None,
        ),
        (
            "apps/v1/Deployment",
            "spec.template.spec.initContainers",
            Some("merge"),
            Some("name"),
            Some(&["name"]),
        ),
        (
            "apps/v1/Deployment",
            "status.conditions",
            Some("merge"),
            Some("type"),
            Some(&["type"]),
        ),
        (
            "batch/v1/Job",
            "status.conditions",
            Some("merge"),
            Some("type"),
            None,
        ),
    ];

    fn walk(key: &str, path: &str) -> SchemaRef<'static> {
        let schemas = builtin();
        let mut at = schemas.get(schemas.roots[key]);
        for part in path.split('.') {
            if let Some(items) = at.items() {
                at = items;
            }
            at = at
                .field(part)
                .unwrap_or_else(|| panic!("{key} {path}: no {part}"));
        }
        at
    }

    #[test]
    fn patch_meta_of_well_known_fields() {
        for &(key, path, strategy, merge_key, map_keys) in PATCH_META {
            let at = walk(key, path);
            assert_eq!(
                at.node().patch_strategy.as_deref(),
                strategy,
                "{key} {path}"
            );
            assert_eq!(at.patch_merge_key(), merge_key, "{key} {path}");
            if let Some(keys) = map_keys {
                assert_eq!(
                    at.list_type(),
                    ListType::Map(keys.iter().map(|k| k.to_string()).collect()),
                    "{key} {path}"
                );
            }
        }
        assert_eq!(
            walk("/v1/Pod", "metadata.finalizers").list_type(),
            ListType::Set
        );
        assert!(
            walk(
                "/v1/Pod",
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            )
            .node()
            .map_atomic
        );
        assert!(
            walk("apps/v1/Deployment", "spec.selector")
                .node()
                .map_atomic
        );
        assert!(
            !walk("/v1/PersistentVolume", "spec.claimRef")
                .node()
                .map_atomic
        );
        assert!(
            walk("/v1/Pod", "spec.containers.env.valueFrom.configMapKeyRef")
                .node()
                .map_atomic
        );
    }

    #[test]
    fn special_types() {
        let cases: &[(&str, &str, Type, Option<&str>, bool)] = &[
            (
                "/v1/Pod",
                "spec.containers.resources.limits.cpu",
                Type::IntOrString,
                Some(crate::schema::QUANTITY_FORMAT),
                false,
            ),
            (
                "/v1/Service",
                "spec.ports.targetPort",
                Type::IntOrString,
                Some("int-or-string"),
                false,
            ),
            (
                "/v1/Pod",
                "metadata.creationTimestamp",
                Type::String,
                Some("date-time"),
                false,
            ),
            ("/v1/Secret", "data.key", Type::String, Some("byte"), false),
            (
                "apps/v1/ControllerRevision",
                "data",
                Type::Object,
                None,
                true,
            ),
            (
                "/v1/Pod",
                "metadata.managedFields.fieldsV1",
                Type::Object,
                None,
                true,
            ),
            (
                "apiextensions.k8s.io/v1/CustomResourceDefinition",
                "spec.versions.schema.openAPIV3Schema.default",
                Type::Any,
                None,
                true,
            ),
        ];
        for &(key, path, ty, format, preserve) in cases {
            let node = walk(key, path).node();
            assert_eq!(
                (
                    node.ty,
                    node.format.as_deref(),
                    node.preserve_unknown_fields
                ),
                (ty, format, preserve),
                "{key} {path}"
            );
        }
        // JSONSchemaProps is recursive: its properties' values are JSONSchemaProps again.
        let props = walk(
            "apiextensions.k8s.io/v1/CustomResourceDefinition",
            "spec.versions.schema.openAPIV3Schema",
        );
        assert_eq!(
            props
                .field("properties")
                .and_then(|p| p.field("x"))
                .map(|p| p.id),
            Some(props.id)
        );
    }
}
