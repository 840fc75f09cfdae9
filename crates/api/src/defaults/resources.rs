//! Defaults for the non-workload kinds: Services, Namespaces, Nodes, volumes and claims,
//! Secrets, endpoints, networking, RBAC, storage, scheduling, admission webhooks and CRDs;
//! plus the resource-list rounding every kind with quantities shares.

use super::{child, each, ensure, is_empty, set, set_str, str_of};
use crate::validation::Quantity;
use base64::Engine;
use serde_json::{Map, Value, json};

pub fn apply(group: &str, kind: &str, root: &mut Map<String, Value>) {
    match (group, kind) {
        ("", "Service") => service(root),
        ("", "Namespace") => namespace(root),
        ("", "Node") => node(root),
        ("", "PersistentVolume") => persistent_volume(root),
        ("", "PersistentVolumeClaim") => pvc(root),
        ("", "Secret") => secret(root),
        ("", "Endpoints") => {
            for subset in each(root, "subsets") {
                for port in each(subset, "ports") {
                    set_str(port, "protocol", "TCP");
                }
            }
        }
        ("", "LimitRange") => limit_range(root),
        ("", "ResourceQuota") => {
            if let Some(hard) = child(root, "spec").and_then(|s| child(s, "hard")) {
                normalize_quantities(hard);
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for port in each(root, "ports") {
                set(port, "name", json!(""));
                set(port, "protocol", json!("TCP"));
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => network_policy(root),
        ("networking.k8s.io", "IngressClass") => {
            if let Some(p) = child(root, "spec").and_then(|s| child(s, "parameters")) {
                set(p, "scope", json!("Cluster"));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(root),
        ("storage.k8s.io", "StorageClass") => {
            set(root, "reclaimPolicy", json!("Delete"));
            set(root, "volumeBindingMode", json!("Immediate"));
        }
        ("storage.k8s.io", "CSIDriver") => csi_driver(root),
        ("scheduling.k8s.io", "PriorityClass") => {
            set(root, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => webhooks(root, false),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => webhooks(root, true),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(root),
        _ => {}
    }
}

/// Upstream rounds every resource list up to milli precision (`SetDefaults_ResourceList`),
/// and quantities always serialize in canonical form; both happen here.
pub fn normalize_quantities(list: &mut Map<String, Value>) {
    for v in list.values_mut() {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        // Unparsable quantities are left for validation to report.
        if let Ok(mut q) = Quantity::parse(&text) {
            q.round_up(-3);
            *v = json!(q.to_string());
        }
    }
}

fn service(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set_str(spec, "sessionAffinity", "None");
    if str_of(spec, "sessionAffinity") == "None" {
        spec.remove("sessionAffinityConfig");
    }
    set_str(spec, "type", "ClusterIP");
    for port in each(spec, "ports") {
        set_str(port, "protocol", "TCP");
        let target_unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(v) => v.as_i64() == Some(0),
        };
        if target_unset {
            let number = port.get("port").cloned().unwrap_or(json!(0));
            port.insert("targetPort".into(), number);
        }
    }
    let ty = str_of(spec, "type").to_string();
    let external = ty == "LoadBalancer"
        || ty == "NodePort"
        || (ty == "ClusterIP" && !is_empty(spec, "externalIPs"));
    if external {
        set_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    // IP families are the allocator's job upstream; on a single-stack IPv4 cluster it
    // settles on these for every service that gets (or could get) a cluster IP.
    if ty != "ExternalName" {
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        if is_empty(spec, "ipFamilies") {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
        }
    }
}

fn namespace(root: &mut Map<String, Value>) {
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !name.is_empty() {
        ensure(ensure(root, "metadata"), "labels")
            .insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    // Upstream's registry forces this on create and keeps the stored list on update; filling
    // only a missing list serves both without undoing finalization.
    set(ensure(root, "spec"), "finalizers", json!(["kubernetes"]));
    set_str(ensure(root, "status"), "phase", "Active");
}

fn node(root: &mut Map<String, Value>) {
    let Some(status) = child(root, "status") else {
        return;
    };
    if let Some(capacity) = child(status, "capacity") {
        normalize_quantities(capacity);
    }
    let capacity = status.get("capacity").filter(|c| c.is_object()).cloned();
    if let Some(capacity) = capacity {
        set(status, "allocatable", capacity);
    }
}

fn persistent_volume(root: &mut Map<String, Value>) {
    if let Some(spec) = child(root, "spec") {
        set_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        set(spec, "volumeMode", json!("Filesystem"));
        if let Some(capacity) = child(spec, "capacity") {
            normalize_quantities(capacity);
        }
    }
    set_str(ensure(root, "status"), "phase", "Pending");
}

/// A claim, standalone or as a StatefulSet volume claim template.
pub fn pvc(root: &mut Map<String, Value>) {
    if let Some(spec) = child(root, "spec") {
        pvc_spec(spec);
    }
    set_str(ensure(root, "status"), "phase", "Pending");
}

pub fn pvc_spec(spec: &mut Map<String, Value>) {
    set(spec, "volumeMode", json!("Filesystem"));
    if let Some(resources) = child(spec, "resources") {
        for list in ["limits", "requests"] {
            if let Some(l) = child(resources, list) {
                normalize_quantities(l);
            }
        }
    }
}

/// `stringData` is write-only upstream: conversion merges it into `data` (winning on
/// conflicts) and drops it.
fn secret(root: &mut Map<String, Value>) {
    set_str(root, "type", "Opaque");
    let Some(Value::Object(string_data)) = root.remove("stringData") else {
        return;
    };
    let data = ensure(root, "data");
    for (k, v) in string_data {
        if let Some(s) = v.as_str() {
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(s)),
            );
        }
    }
}

fn limit_range(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    for item in each(spec, "limits") {
        for list in [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            if let Some(l) = child(item, list) {
                normalize_quantities(l);
            }
        }
        if str_of(item, "type") != "Container" {
            continue;
        }
        // Missing default limits come from max; missing default requests from the default
        // limit, then from min.
        let copy_missing = |item: &mut Map<String, Value>, from: &str, to: &str| {
            let Some(source) = item.get(from).and_then(Value::as_object).cloned() else {
                return;
            };
            if source.is_empty() {
                return;
            }
            let target = ensure(item, to);
            for (k, v) in source {
                target.entry(k).or_insert(v);
            }
        };
        copy_missing(item, "max", "default");
        copy_missing(item, "default", "defaultRequest");
        copy_missing(item, "min", "defaultRequest");
    }
}

fn network_policy(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    for dir in ["ingress", "egress"] {
        for rule in each(spec, dir) {
            for port in each(rule, "ports") {
                set(port, "protocol", json!("TCP"));
            }
        }
    }
    if is_empty(spec, "policyTypes") {
        let types = if is_empty(spec, "egress") {
            json!(["Ingress"])
        } else {
            json!(["Ingress", "Egress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

fn role_binding(root: &mut Map<String, Value>) {
    if let Some(role_ref) = child(root, "roleRef") {
        set_str(role_ref, "apiGroup", "rbac.authorization.k8s.io");
    }
    for subject in each(root, "subjects") {
        let kind = str_of(subject, "kind");
        if kind == "User" || kind == "Group" {
            set_str(subject, "apiGroup", "rbac.authorization.k8s.io");
        }
    }
}

fn csi_driver(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set(spec, "attachRequired", json!(true));
    set(spec, "podInfoOnMount", json!(false));
    set(spec, "storageCapacity", json!(false));
    set(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
    if is_empty(spec, "volumeLifecycleModes") {
        spec.insert("volumeLifecycleModes".into(), json!(["Persistent"]));
    }
    set(spec, "requiresRepublish", json!(false));
    set(spec, "seLinuxMount", json!(false));
}

fn webhooks(root: &mut Map<String, Value>, mutating: bool) {
    for hook in each(root, "webhooks") {
        set(hook, "failurePolicy", json!("Fail"));
        set(hook, "matchPolicy", json!("Equivalent"));
        set(hook, "namespaceSelector", json!({}));
        set(hook, "objectSelector", json!({}));
        set(hook, "timeoutSeconds", json!(10));
        if mutating {
            set(hook, "reinvocationPolicy", json!("Never"));
        }
        for rule in each(hook, "rules") {
            set(rule, "scope", json!("*"));
        }
        if let Some(svc) = child(hook, "clientConfig").and_then(|c| child(c, "service")) {
            set(svc, "port", json!(443));
        }
    }
}

fn crd(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    if let Some(names) = child(spec, "names") {
        let kind = str_of(names, "kind").to_string();
        set_str(names, "singular", &kind.to_lowercase());
        if !kind.is_empty() {
            set_str(names, "listKind", &format!("{kind}List"));
        }
    }
    set(spec, "conversion", json!({"strategy": "None"}));
    if let Some(svc) = child(spec, "conversion")
        .and_then(|c| child(c, "webhook"))
        .and_then(|w| child(w, "clientConfig"))
        .and_then(|c| child(c, "service"))
    {
        set(svc, "port", json!(443));
    }
    let storage = spec
        .get("versions")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name"))
        .cloned();
    if let Some(name) = storage {
        let status = ensure(root, "status");
        if is_empty(status, "storedVersions") {
            status.insert("storedVersions".into(), json!([name]));
        }
    }
}
