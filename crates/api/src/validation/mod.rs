//! Per-kind validation with upstream's field errors: `validate` runs what the API server runs
//! after defaulting on create and update, and returns the causes of a 422 `Invalid`, in
//! upstream's order, with upstream's paths and messages.

mod core;
pub mod cron;
pub mod field;
pub mod meta;
pub mod names;
mod other;
pub mod path;
mod pod;
pub mod quantity;
mod workloads;

pub use field::{ErrorType, FieldError};
pub use names::NameRule;
pub use quantity::{Format, Quantity, QuantityError};

use serde_json::Value;

/// Validates `obj` of the given kind. `old` is the stored object on update (`None` on
/// create). `namespaced` says whether the kind lives in namespaces, which decides whether
/// `metadata.namespace` is required or forbidden.
///
/// On update the new object must carry `metadata.resourceVersion`, as upstream's store has
/// filled it in for unconditional updates before validating.
pub fn validate(
    group: &str,
    version: &str,
    kind: &str,
    namespaced: bool,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    let mut errs = match (group, kind, old) {
        // Legacy core Events predate object-meta validation; upstream checks only namespaces.
        ("", "Event", _) => vec![],
        (_, _, None) => meta::validate_object_meta(obj, namespaced, name_rule(group, kind)),
        (_, _, Some(old)) => meta::validate_object_meta_update(obj, old),
    };
    errs.extend(validate_spec(group, version, kind, obj, old));
    if let Some(old) = old {
        errs.extend(validate_update(group, kind, obj, old));
    }
    errs
}

/// How each kind's `metadata.name` is checked.
pub fn name_rule(group: &str, kind: &str) -> NameRule {
    match (group, kind) {
        ("", "Service") => NameRule::Dns1035Label,
        ("", "Namespace") | ("apps", "StatefulSet") => NameRule::Label,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn validate_spec(
    group: &str,
    version: &str,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    match (group, kind) {
        ("", "Pod") => pod::validate_pod(obj),
        ("", "PodTemplate") => core::validate_pod_template(obj),
        ("", "ReplicationController") => workloads::validate_replication_controller(obj),
        ("", "Service") => core::validate_service(obj),
        ("", "ConfigMap") => core::validate_config_map(obj),
        ("", "Secret") => core::validate_secret(obj),
        ("", "Namespace") => core::validate_namespace(obj),
        ("", "PersistentVolume") => core::validate_pv(obj),
        ("", "PersistentVolumeClaim") => core::validate_pvc(obj),
        ("", "Node") => core::validate_node(obj),
        ("", "Event") => core::validate_event(obj),
        ("", "Endpoints") => core::validate_endpoints(obj),
        ("", "ServiceAccount") => core::validate_service_account(obj),
        ("", "ResourceQuota") => core::validate_resource_quota(obj),
        ("", "LimitRange") => core::validate_limit_range(obj),
        ("apps", "Deployment") => workloads::validate_deployment(obj),
        ("apps", "ReplicaSet") => workloads::validate_replica_set(obj),
        ("apps", "StatefulSet") => workloads::validate_stateful_set(obj),
        ("apps", "DaemonSet") => workloads::validate_daemon_set(obj),
        ("batch", "Job") => workloads::validate_job(obj),
        ("batch", "CronJob") => workloads::validate_cron_job(obj, old),
        ("autoscaling", "HorizontalPodAutoscaler") => workloads::validate_hpa(obj, version),
        ("rbac.authorization.k8s.io", "Role") => other::validate_rbac_rules(obj, true),
        ("rbac.authorization.k8s.io", "ClusterRole") => other::validate_rbac_rules(obj, false),
        ("rbac.authorization.k8s.io", "RoleBinding") => other::validate_role_binding(obj, true),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            other::validate_role_binding(obj, false)
        }
        ("coordination.k8s.io", "Lease") => other::validate_lease(obj),
        ("scheduling.k8s.io", "PriorityClass") => other::validate_priority_class(obj),
        ("networking.k8s.io", "NetworkPolicy") => other::validate_network_policy(obj),
        ("networking.k8s.io", "Ingress") => other::validate_ingress(obj),
        ("storage.k8s.io", "StorageClass") => other::validate_storage_class(obj),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            other::validate_webhooks(obj, false)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            other::validate_webhooks(obj, true)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => other::validate_crd_name(obj),
        _ => vec![],
    }
}

fn validate_update(group: &str, kind: &str, obj: &Value, old: &Value) -> Vec<FieldError> {
    match (group, kind) {
        ("", "Pod") => pod::validate_pod_update(obj, old),
        ("", "Service") => core::validate_service_update(obj, old),
        ("", "ConfigMap" | "Secret") => core::validate_immutable_data_update(obj, old, kind),
        ("", "PersistentVolumeClaim") => core::validate_pvc_update(obj, old),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            workloads::validate_selector_update(obj, old)
        }
        ("apps", "StatefulSet") => workloads::validate_stateful_set_update(obj, old),
        ("batch", "Job") => workloads::validate_job_update(obj, old),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            other::validate_role_binding_update(obj, old)
        }
        ("scheduling.k8s.io", "PriorityClass") => other::validate_priority_class_update(obj, old),
        ("storage.k8s.io", "StorageClass") => other::validate_storage_class_update(obj, old),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests;
