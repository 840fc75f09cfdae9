//! Pod spec validation (upstream's `ValidatePodSpec` and what it calls): containers, ports,
//! env, volumes and mounts, probes, resources, security contexts, tolerations, DNS; also pod
//! templates and the pod-update immutability rules.

use super::FieldError;
use super::meta::{self, nonnegative, not_found, validate_annotations, validate_labels};
use super::names::{self, inclusive_range_error};
use super::path::{Get, Path, at};
use super::quantity::{Quantity, QuantityError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const FILE_MODE_ERROR: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];
const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// The volume sources in upstream's checking order; the first one set wins and any later one
/// is reported as a second type.
const VOLUME_SOURCES: &[&str] = &[
    "emptyDir",
    "hostPath",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flocker",
    "persistentVolumeClaim",
    "rbd",
    "cinder",
    "cephfs",
    "quobyte",
    "downwardAPI",
    "fc",
    "flexVolume",
    "configMap",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "storageos",
    "projected",
    "scaleIO",
    "csi",
    "ephemeral",
    "image",
];

fn not_supported(path: &Path, value: &str, supported: &[&str]) -> FieldError {
    FieldError::not_supported(path, json!(value), supported)
}

/// A required enum-like string: missing is `Required`, unknown is `NotSupported`.
fn required_enum(value: &str, supported: &[&str], path: &Path) -> Option<FieldError> {
    if value.is_empty() {
        Some(FieldError::required(path, ""))
    } else if !supported.contains(&value) {
        Some(not_supported(path, value, supported))
    } else {
        None
    }
}

fn dns1123_label(value: &str, path: &Path) -> Vec<FieldError> {
    names::is_dns1123_label(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, json!(value), m))
        .collect()
}

fn dns1123_subdomain(value: &str, path: &Path) -> Vec<FieldError> {
    names::is_dns1123_subdomain(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, json!(value), m))
        .collect()
}

/// `ValidatePodTemplateSpec`. Upstream reports template labels at `<template>.labels`, not
/// `<template>.metadata.labels`; that quirk is kept.
pub fn validate_pod_template_spec(template: &Value, path: &Path) -> Vec<FieldError> {
    let meta = template.field("metadata").unwrap_or(&Value::Null);
    let mut errs = validate_labels(meta.field("labels"), &path.child("labels"));
    errs.extend(validate_annotations(
        meta.field("annotations"),
        &path.child("annotations"),
    ));
    let spec = template.field("spec").unwrap_or(&Value::Null);
    errs.extend(validate_pod_spec(spec, &path.child("spec")));
    if !spec.arr_of("ephemeralContainers").is_empty() {
        errs.push(FieldError::forbidden(
            path.children(&["spec", "ephemeralContainers"]),
            "ephemeral containers not allowed in pod template",
        ));
    }
    errs
}

/// A pod on create.
pub fn validate_pod(pod: &Value) -> Vec<FieldError> {
    let spec = pod.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = validate_pod_spec(spec, &path);
    if !spec.arr_of("ephemeralContainers").is_empty() {
        errs.push(FieldError::forbidden(
            path.child("ephemeralContainers"),
            "cannot be set on create",
        ));
    }
    errs
}

pub fn validate_pod_spec(spec: &Value, path: &Path) -> Vec<FieldError> {
    let (volumes, mut errs) = validate_volumes(spec.arr_of("volumes"), &path.child("volumes"));
    errs.extend(validate_containers(
        spec.arr_of("containers"),
        &volumes,
        &path.child("containers"),
    ));
    errs.extend(validate_init_containers(
        spec,
        &volumes,
        &path.child("initContainers"),
    ));
    errs.extend(required_enum(
        spec.str_of("restartPolicy"),
        &["Always", "OnFailure", "Never"],
        &path.child("restartPolicy"),
    ));
    let dns_policy = spec.str_of("dnsPolicy");
    errs.extend(required_enum(
        dns_policy,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        &path.child("dnsPolicy"),
    ));
    errs.extend(validate_labels(
        spec.field("nodeSelector"),
        &path.child("nodeSelector"),
    ));
    errs.extend(validate_pod_security_context(
        spec.field("securityContext"),
        &path.child("securityContext"),
    ));
    for (i, s) in spec.arr_of("imagePullSecrets").iter().enumerate() {
        if s.str_of("name").is_empty() {
            errs.push(FieldError::required(
                path.child("imagePullSecrets").index(i).child("name"),
                "",
            ));
        }
    }
    errs.extend(validate_dns_config(
        spec.field("dnsConfig"),
        dns_policy,
        &path.child("dnsConfig"),
    ));
    let sa = spec.str_of("serviceAccountName");
    if !sa.is_empty() {
        errs.extend(dns1123_subdomain(sa, &path.child("serviceAccountName")));
    }
    let node = spec.str_of("nodeName");
    if !node.is_empty() {
        errs.extend(dns1123_subdomain(node, &path.child("nodeName")));
    }
    if let Some(v) = spec.int_of("activeDeadlineSeconds")
        && !(1..=i64::from(i32::MAX)).contains(&v)
    {
        errs.push(FieldError::invalid(
            path.child("activeDeadlineSeconds"),
            json!(v),
            inclusive_range_error(1, i64::from(i32::MAX)),
        ));
    }
    for field in ["hostname", "subdomain"] {
        let v = spec.str_of(field);
        if !v.is_empty() {
            errs.extend(dns1123_label(v, &path.child(field)));
        }
    }
    errs.extend(validate_tolerations(
        spec.arr_of("tolerations"),
        &path.child("tolerations"),
    ));
    let priority_class = spec.str_of("priorityClassName");
    if !priority_class.is_empty() {
        errs.extend(dns1123_subdomain(
            priority_class,
            &path.child("priorityClassName"),
        ));
    }
    if let Some(rc) = spec.opt_str("runtimeClassName") {
        errs.extend(dns1123_subdomain(rc, &path.child("runtimeClassName")));
    }
    if let Some(p) = spec.opt_str("preemptionPolicy")
        && p != "PreemptLowerPriority"
        && p != "Never"
    {
        errs.push(not_supported(
            &path.child("preemptionPolicy"),
            p,
            &["Never", "PreemptLowerPriority"],
        ));
    }
    if let Some(os) = spec.field("os") {
        let name = os.str_of("name");
        if name.is_empty() {
            errs.push(FieldError::required(path.children(&["os", "name"]), ""));
        } else if name != "linux" && name != "windows" {
            errs.push(not_supported(
                &path.children(&["os", "name"]),
                name,
                &["linux", "windows"],
            ));
        }
    }
    errs
}

fn validate_containers(
    containers: &[Value],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    if containers.is_empty() {
        return vec![FieldError::required(path, "")];
    }
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let p = path.index(i);
        errs.extend(validate_container_common(c, volumes, &p));
        let name = c.str_of("name");
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(p.child("name"), json!(name)));
        }
        errs.extend(validate_lifecycle(
            c.field("lifecycle"),
            &p.child("lifecycle"),
        ));
        errs.extend(validate_probe(
            c.field("livenessProbe"),
            &p.child("livenessProbe"),
            ProbeKind::Liveness,
        ));
        errs.extend(validate_probe(
            c.field("readinessProbe"),
            &p.child("readinessProbe"),
            ProbeKind::Readiness,
        ));
        errs.extend(validate_probe(
            c.field("startupProbe"),
            &p.child("startupProbe"),
            ProbeKind::Startup,
        ));
        if c.has("restartPolicy") {
            errs.push(FieldError::forbidden(
                p.child("restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    errs.extend(host_port_conflicts(containers, path));
    errs
}

fn validate_init_containers(
    spec: &Value,
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen: BTreeSet<&str> = spec
        .arr_of("containers")
        .iter()
        .map(|c| c.str_of("name"))
        .collect();
    for (i, c) in spec.arr_of("initContainers").iter().enumerate() {
        let p = path.index(i);
        errs.extend(validate_container_common(c, volumes, &p));
        let name = c.str_of("name");
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(p.child("name"), json!(name)));
        }
        match c.opt_str("restartPolicy") {
            Some("Always") => {
                errs.extend(validate_lifecycle(
                    c.field("lifecycle"),
                    &p.child("lifecycle"),
                ));
                errs.extend(validate_probe(
                    c.field("livenessProbe"),
                    &p.child("livenessProbe"),
                    ProbeKind::Liveness,
                ));
                errs.extend(validate_probe(
                    c.field("readinessProbe"),
                    &p.child("readinessProbe"),
                    ProbeKind::Readiness,
                ));
                errs.extend(validate_probe(
                    c.field("startupProbe"),
                    &p.child("startupProbe"),
                    ProbeKind::Startup,
                ));
            }
            other => {
                if let Some(policy) = other {
                    errs.push(not_supported(
                        &p.child("restartPolicy"),
                        policy,
                        &["Always"],
                    ));
                }
                for field in [
                    "lifecycle",
                    "livenessProbe",
                    "readinessProbe",
                    "startupProbe",
                ] {
                    if c.has(field) {
                        errs.push(FieldError::forbidden(
                            p.child(field),
                            "may not be set for init containers without restartPolicy=Always",
                        ));
                    }
                }
            }
        }
    }
    errs.extend(host_port_conflicts(spec.arr_of("initContainers"), path));
    errs
}

fn validate_container_common(
    c: &Value,
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = c.str_of("name");
    if name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    } else {
        errs.extend(dns1123_label(name, &path.child("name")));
    }
    if c.str_of("image").is_empty() {
        errs.push(FieldError::required(path.child("image"), ""));
    }
    errs.extend(required_enum(
        c.str_of("terminationMessagePolicy"),
        &["File", "FallbackToLogsOnError"],
        &path.child("terminationMessagePolicy"),
    ));
    errs.extend(validate_container_ports(
        c.arr_of("ports"),
        &path.child("ports"),
    ));
    errs.extend(validate_env(c.arr_of("env"), &path.child("env")));
    errs.extend(validate_env_from(
        c.arr_of("envFrom"),
        &path.child("envFrom"),
    ));
    errs.extend(validate_volume_mounts(
        c,
        volumes,
        &path.child("volumeMounts"),
    ));
    errs.extend(required_enum(
        c.str_of("imagePullPolicy"),
        &["Always", "IfNotPresent", "Never"],
        &path.child("imagePullPolicy"),
    ));
    errs.extend(validate_resources(
        c.field("resources"),
        &path.child("resources"),
    ));
    errs.extend(validate_security_context(
        c.field("securityContext"),
        &path.child("securityContext"),
    ));
    errs
}

fn validate_container_ports(ports: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names_seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = port.str_of("name");
        if !name.is_empty() {
            let msgs = names::is_valid_port_name(name);
            if !msgs.is_empty() {
                errs.extend(
                    msgs.into_iter()
                        .map(|m| FieldError::invalid(p.child("name"), json!(name), m)),
                );
            } else if !names_seen.insert(name) {
                errs.push(FieldError::duplicate(p.child("name"), json!(name)));
            }
        }
        match port.int_of("containerPort").unwrap_or(0) {
            0 => errs.push(FieldError::required(p.child("containerPort"), "")),
            n => errs.extend(port_num(n, &p.child("containerPort"))),
        }
        let host = port.int_of("hostPort").unwrap_or(0);
        if host != 0 {
            errs.extend(port_num(host, &p.child("hostPort")));
        }
        errs.extend(required_enum(
            port.str_of("protocol"),
            PROTOCOLS,
            &p.child("protocol"),
        ));
    }
    errs
}

fn port_num(n: i64, path: &Path) -> Vec<FieldError> {
    names::is_valid_port_num(n)
        .into_iter()
        .map(|m| FieldError::invalid(path, json!(n), m))
        .collect()
}

fn host_port_conflicts(containers: &[Value], path: &Path) -> Vec<FieldError> {
    let mut seen = BTreeSet::new();
    let mut errs = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, port) in c.arr_of("ports").iter().enumerate() {
            let host = port.int_of("hostPort").unwrap_or(0);
            if host == 0 {
                continue;
            }
            let key = format!(
                "{}/{}/{host}",
                port.str_of("protocol"),
                port.str_of("hostIP")
            );
            if !seen.insert(key.clone()) {
                let p = path.index(ci).child("ports").index(pi).child("hostPort");
                errs.push(FieldError::duplicate(p, json!(key)));
            }
        }
    }
    errs
}

/// `IntOrString` ports: numbers must be in range, names must be IANA service names.
pub fn port_num_or_name(port: Option<&Value>, path: &Path) -> Vec<FieldError> {
    match port {
        Some(Value::String(s)) => names::is_valid_port_name(s)
            .into_iter()
            .map(|m| FieldError::invalid(path, json!(s), m))
            .collect(),
        Some(v) => port_num(v.as_i64().unwrap_or(0), path),
        None => port_num(0, path),
    }
}

fn validate_env(vars: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ev) in vars.iter().enumerate() {
        let p = path.index(i);
        let name = ev.str_of("name");
        if name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        errs.extend(
            names::is_env_var_name(name)
                .into_iter()
                .map(|m| FieldError::invalid(p.child("name"), json!(name), m)),
        );
        if let Some(from) = ev.field("valueFrom") {
            errs.extend(validate_env_value_from(
                from,
                !ev.str_of("value").is_empty(),
                &p.child("valueFrom"),
            ));
        }
    }
    errs
}

fn validate_env_value_from(from: &Value, has_value: bool, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut sources = 0;
    if let Some(fr) = from.field("fieldRef") {
        sources += 1;
        errs.extend(validate_field_selector(
            fr,
            ENV_FIELD_PATHS,
            &path.child("fieldRef"),
        ));
    }
    if let Some(rr) = from.field("resourceFieldRef") {
        sources += 1;
        if rr.str_of("resource").is_empty() {
            errs.push(FieldError::required(
                path.children(&["resourceFieldRef", "resource"]),
                "",
            ));
        }
    }
    for (key, p) in [
        ("configMapKeyRef", path.child("configMapKeyRef")),
        ("secretKeyRef", path.child("secretKeyRef")),
    ] {
        if let Some(r) = from.field(key) {
            sources += 1;
            errs.extend(dns1123_subdomain(r.str_of("name"), &p.child("name")));
            let k = r.str_of("key");
            if k.is_empty() {
                errs.push(FieldError::required(p.child("key"), ""));
            } else {
                errs.extend(
                    names::is_config_map_key(k)
                        .into_iter()
                        .map(|m| FieldError::invalid(p.child("key"), json!(k), m)),
                );
            }
        }
    }
    if sources == 0 {
        errs.push(FieldError::invalid(
            path,
            json!(""),
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        ));
    } else if has_value {
        errs.push(FieldError::invalid(
            path,
            json!(""),
            "may not be specified when `value` is not empty",
        ));
    } else if sources > 1 {
        errs.push(FieldError::invalid(
            path,
            json!(""),
            "may not have more than one field specified at a time",
        ));
    }
    errs
}

fn validate_field_selector(fs: &Value, allowed: &[&str], path: &Path) -> Vec<FieldError> {
    let api_version = fs.str_of("apiVersion");
    if api_version.is_empty() {
        return vec![FieldError::required(path.child("apiVersion"), "")];
    }
    let field_path = fs.str_of("fieldPath");
    if field_path.is_empty() {
        return vec![FieldError::required(path.child("fieldPath"), "")];
    }
    if api_version != "v1" {
        let msg = format!("error converting fieldPath: unsupported pod version: {api_version}");
        return vec![FieldError::invalid(
            path.child("fieldPath"),
            json!(field_path),
            msg,
        )];
    }
    if let Some((base, rest)) = field_path.split_once("['") {
        let subscript = rest.strip_suffix("']").unwrap_or(rest);
        return match base {
            "metadata.annotations" => {
                meta::validate_qualified_name(&subscript.to_lowercase(), path)
            }
            "metadata.labels" => meta::validate_qualified_name(subscript, path),
            _ => vec![FieldError::invalid(
                path,
                json!(base),
                "does not support subscript",
            )],
        };
    }
    if allowed.contains(&field_path) {
        vec![]
    } else {
        vec![not_supported(&path.child("fieldPath"), field_path, allowed)]
    }
}

fn validate_env_from(sources: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let p = path.index(i);
        let prefix = src.str_of("prefix");
        if !prefix.is_empty() {
            errs.extend(
                names::is_env_var_name(prefix)
                    .into_iter()
                    .map(|m| FieldError::invalid(p.child("prefix"), json!(prefix), m)),
            );
        }
        let mut n = 0;
        for key in ["configMapRef", "secretRef"] {
            if let Some(r) = src.field(key) {
                n += 1;
                let name = r.str_of("name");
                if name.is_empty() {
                    errs.push(FieldError::required(p.children(&[key, "name"]), ""));
                } else {
                    errs.extend(dns1123_subdomain(name, &p.children(&[key, "name"])));
                }
            }
        }
        if n == 0 {
            errs.push(FieldError::invalid(
                path,
                json!(""),
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        } else if n > 1 {
            errs.push(FieldError::invalid(
                path,
                json!(""),
                "may not have more than one field specified at a time",
            ));
        }
    }
    errs
}

/// Validates volumes and returns the names of the valid ones, which mounts may reference.
fn validate_volumes(volumes: &[Value], path: &Path) -> (BTreeSet<String>, Vec<FieldError>) {
    let mut valid = BTreeSet::new();
    let mut errs = Vec::new();
    for (i, vol) in volumes.iter().enumerate() {
        let p = path.index(i);
        let name = vol.str_of("name");
        let mut el = validate_volume_source(vol, &p);
        if name.is_empty() {
            el.push(FieldError::required(p.child("name"), ""));
        } else {
            el.extend(dns1123_label(name, &p.child("name")));
        }
        if valid.contains(name) {
            el.push(FieldError::duplicate(p.child("name"), json!(name)));
        }
        if el.is_empty() {
            valid.insert(name.to_string());
        }
        errs.extend(el);
    }
    (valid, errs)
}

fn validate_volume_source(vol: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut found = false;
    for &source in VOLUME_SOURCES {
        let Some(src) = vol.field(source) else {
            continue;
        };
        let p = path.child(source);
        if found {
            errs.push(FieldError::forbidden(
                p,
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        found = true;
        errs.extend(validate_one_source(source, src, &p));
    }
    if !found {
        errs.push(FieldError::required(path, "must specify a volume type"));
    }
    errs
}

fn require(src: &Value, field: &str, path: &Path) -> Option<FieldError> {
    src.str_of(field)
        .is_empty()
        .then(|| FieldError::required(path.child(field), ""))
}

fn file_mode(src: &Value, field: &str, path: &Path) -> Option<FieldError> {
    let mode = src.int_of(field)?;
    (!(0..=0o777).contains(&mode))
        .then(|| FieldError::invalid(path.child(field), json!(mode), FILE_MODE_ERROR))
}

fn validate_one_source(source: &str, src: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match source {
        "emptyDir" => {
            let negative = src
                .opt_str("sizeLimit")
                .and_then(|s| Quantity::parse(s).ok())
                .is_some_and(|q| q.is_negative());
            if negative {
                errs.push(FieldError::forbidden(
                    path.child("sizeLimit"),
                    "SizeLimit field must be a valid resource quantity",
                ));
            }
        }
        "hostPath" => {
            errs.extend(require(src, "path", path));
            errs.extend(no_backsteps(src.str_of("path"), &path.child("path")));
            if let Some(ty) = src.opt_str("type") {
                let types = [
                    "",
                    "DirectoryOrCreate",
                    "Directory",
                    "FileOrCreate",
                    "File",
                    "Socket",
                    "CharDevice",
                    "BlockDevice",
                ];
                if !types.contains(&ty) {
                    errs.push(not_supported(&path.child("type"), ty, &types));
                }
            }
        }
        "secret" | "configMap" => {
            errs.extend(require(
                src,
                if source == "secret" {
                    "secretName"
                } else {
                    "name"
                },
                path,
            ));
            errs.extend(file_mode(src, "defaultMode", path));
            errs.extend(key_to_paths(src.arr_of("items"), &path.child("items")));
        }
        "persistentVolumeClaim" => errs.extend(require(src, "claimName", path)),
        "nfs" => {
            errs.extend(require(src, "server", path));
            match src.str_of("path") {
                "" => errs.push(FieldError::required(path.child("path"), "")),
                p if !p.starts_with('/') => errs.push(FieldError::invalid(
                    path.child("path"),
                    json!(p),
                    "must be an absolute path",
                )),
                _ => {}
            }
        }
        "csi" => errs.extend(require(src, "driver", path)),
        "downwardAPI" => {
            errs.extend(file_mode(src, "defaultMode", path));
            errs.extend(downward_api_items(
                src.arr_of("items"),
                &path.child("items"),
            ));
        }
        "projected" => errs.extend(validate_projected(src, path)),
        "ephemeral" if !src.has("volumeClaimTemplate") => {
            errs.push(FieldError::required(path.child("volumeClaimTemplate"), ""))
        }
        _ => {}
    }
    errs
}

fn validate_projected(src: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs: Vec<FieldError> = file_mode(src, "defaultMode", path).into_iter().collect();
    for (i, s) in src.arr_of("sources").iter().enumerate() {
        let p = path.child("sources").index(i);
        let kinds = [
            "secret",
            "downwardAPI",
            "configMap",
            "serviceAccountToken",
            "clusterTrustBundle",
        ];
        let set: Vec<&str> = kinds.into_iter().filter(|k| s.has(k)).collect();
        if set.len() > 1 {
            for k in &set[1..] {
                errs.push(FieldError::forbidden(
                    p.child(k),
                    "may not specify more than 1 volume type per source",
                ));
            }
        }
        for k in ["secret", "configMap"] {
            if let Some(r) = s.field(k) {
                errs.extend(key_to_paths(r.arr_of("items"), &p.children(&[k, "items"])));
            }
        }
        if let Some(d) = s.field("downwardAPI") {
            errs.extend(downward_api_items(
                d.arr_of("items"),
                &p.children(&["downwardAPI", "items"]),
            ));
        }
        if let Some(t) = s.field("serviceAccountToken") {
            let tp = p.child("serviceAccountToken");
            if let Some(secs) = t.int_of("expirationSeconds") {
                if secs < 600 {
                    errs.push(FieldError::invalid(
                        tp.child("expirationSeconds"),
                        json!(secs),
                        "may not specify a duration less than 10 minutes",
                    ));
                } else if secs > 1 << 32 {
                    errs.push(FieldError::invalid(
                        tp.child("expirationSeconds"),
                        json!(secs),
                        "may not specify a duration larger than 2^32 seconds",
                    ));
                }
            }
            if t.str_of("path").is_empty() {
                errs.push(FieldError::required(tp.child("path"), ""));
            }
        }
    }
    errs
}

fn key_to_paths(items: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, kp) in items.iter().enumerate() {
        let p = path.index(i);
        errs.extend(require(kp, "key", &p));
        errs.extend(require(kp, "path", &p));
        errs.extend(local_non_reserved_path(kp.str_of("path"), &p.child("path")));
        errs.extend(file_mode(kp, "mode", &p));
    }
    errs
}

fn downward_api_items(items: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        errs.extend(require(item, "path", &p));
        errs.extend(local_non_reserved_path(
            item.str_of("path"),
            &p.child("path"),
        ));
        errs.extend(file_mode(item, "mode", &p));
        match (item.field("fieldRef"), item.field("resourceFieldRef")) {
            (Some(_), Some(_)) => errs.push(FieldError::invalid(
                p,
                json!("resource"),
                "fieldRef and resourceFieldRef can not be specified simultaneously",
            )),
            (Some(fr), None) => errs.extend(validate_field_selector(
                fr,
                VOLUME_FIELD_PATHS,
                &p.child("fieldRef"),
            )),
            (None, Some(_)) => {}
            (None, None) => errs.push(FieldError::required(
                p,
                "one of fieldRef and resourceFieldRef is required",
            )),
        }
    }
    errs
}

fn no_backsteps(target: &str, path: &Path) -> Option<FieldError> {
    target
        .split(['/', '\\'])
        .any(|part| part == "..")
        .then(|| FieldError::invalid(path, json!(target), "must not contain '..'"))
}

fn local_descending_path(target: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if target.starts_with('/') {
        errs.push(FieldError::invalid(
            path,
            json!(target),
            "must be a relative path",
        ));
    }
    errs.extend(no_backsteps(target, path));
    errs
}

fn local_non_reserved_path(target: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = local_descending_path(target, path);
    if target.starts_with("..") && !target.starts_with("../") {
        errs.push(FieldError::invalid(
            path,
            json!(target),
            "must not start with '..'",
        ));
    }
    errs
}

fn validate_volume_mounts(c: &Value, volumes: &BTreeSet<String>, path: &Path) -> Vec<FieldError> {
    let devices: BTreeMap<&str, &str> = c
        .arr_of("volumeDevices")
        .iter()
        .map(|d| (d.str_of("name"), d.str_of("devicePath")))
        .collect();
    let mut errs = Vec::new();
    let mut mount_points = BTreeSet::new();
    for (i, m) in c.arr_of("volumeMounts").iter().enumerate() {
        let p = path.index(i);
        let name = m.str_of("name");
        if name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        if !volumes.contains(name) {
            errs.push(not_found(&p.child("name"), json!(name)));
        }
        let mount_path = m.str_of("mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(p.child("mountPath"), ""));
        }
        if !mount_points.insert(mount_path) {
            errs.push(FieldError::invalid(
                p.child("mountPath"),
                json!(mount_path),
                "must be unique",
            ));
        }
        if devices.contains_key(name) {
            errs.push(FieldError::invalid(
                p.child("name"),
                json!(name),
                "must not already exist in volumeDevices",
            ));
        }
        if devices.values().any(|d| *d == mount_path) {
            errs.push(FieldError::invalid(
                p.child("mountPath"),
                json!(mount_path),
                "must not already exist as a path in volumeDevices",
            ));
        }
        // Upstream reports sub-path errors on the list path, without the index.
        let sub_path = m.str_of("subPath");
        if !sub_path.is_empty() {
            errs.extend(local_descending_path(sub_path, &path.child("subPath")));
        }
        let expr = m.str_of("subPathExpr");
        if !expr.is_empty() {
            if !sub_path.is_empty() {
                errs.push(FieldError::invalid(
                    p.child("subPathExpr"),
                    json!(expr),
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            errs.extend(local_descending_path(expr, &path.child("subPathExpr")));
        }
        if let Some(mp) = m.opt_str("mountPropagation") {
            let modes = ["Bidirectional", "HostToContainer", "None"];
            if !modes.contains(&mp) {
                errs.push(not_supported(&path.child("mountPropagation"), mp, &modes));
            }
        }
    }
    errs
}

#[derive(Clone, Copy, PartialEq)]
enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

fn validate_probe(probe: Option<&Value>, path: &Path, kind: ProbeKind) -> Vec<FieldError> {
    let Some(probe) = probe else { return vec![] };
    let mut errs = validate_handler(probe, path, &["exec", "httpGet", "tcpSocket", "grpc"]);
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        errs.extend(nonnegative(
            probe.int_of(field).unwrap_or(0),
            &path.child(field),
        ));
    }
    let grace = probe.int_of("terminationGracePeriodSeconds");
    if let Some(g) = grace.filter(|g| *g <= 0) {
        errs.push(FieldError::invalid(
            path.child("terminationGracePeriodSeconds"),
            json!(g),
            "must be greater than 0",
        ));
    }
    match kind {
        ProbeKind::Readiness => {
            if let Some(g) = grace {
                errs.push(FieldError::invalid(
                    path.child("terminationGracePeriodSeconds"),
                    json!(g),
                    "must not be set for readinessProbes",
                ));
            }
        }
        ProbeKind::Liveness | ProbeKind::Startup => {
            let st = probe.int_of("successThreshold").unwrap_or(0);
            if st != 1 {
                errs.push(FieldError::invalid(
                    path.child("successThreshold"),
                    json!(st),
                    "must be 1",
                ));
            }
        }
    }
    errs
}

fn validate_lifecycle(lifecycle: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(lc) = lifecycle else { return vec![] };
    let mut errs = Vec::new();
    for hook in ["postStart", "preStop"] {
        if let Some(h) = lc.field(hook) {
            errs.extend(validate_handler(
                h,
                &path.child(hook),
                &["exec", "httpGet", "tcpSocket", "sleep"],
            ));
        }
    }
    errs
}

fn validate_handler(h: &Value, path: &Path, kinds: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut found = false;
    for &kind in kinds {
        let Some(action) = h.field(kind) else {
            continue;
        };
        let p = path.child(kind);
        if found {
            errs.push(FieldError::forbidden(
                p,
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        found = true;
        match kind {
            "exec" if action.arr_of("command").is_empty() => {
                errs.push(FieldError::required(p.child("command"), ""))
            }
            "httpGet" => {
                errs.extend(require(action, "path", &p));
                errs.extend(port_num_or_name(action.field("port"), &p.child("port")));
                let scheme = action.str_of("scheme");
                if scheme != "HTTP" && scheme != "HTTPS" {
                    errs.push(not_supported(
                        &p.child("scheme"),
                        scheme,
                        &["HTTP", "HTTPS"],
                    ));
                }
            }
            "tcpSocket" => errs.extend(port_num_or_name(action.field("port"), &p.child("port"))),
            "grpc" => errs.extend(port_num(
                action.int_of("port").unwrap_or(0),
                &p.child("port"),
            )),
            "sleep" => errs.extend(nonnegative(
                action.int_of("seconds").unwrap_or(0),
                &p.child("seconds"),
            )),
            _ => {}
        }
    }
    if !found {
        errs.push(FieldError::required(path, "must specify a handler type"));
    }
    errs
}

/// Names with no `/` (or a `kubernetes.io/` prefix) are Kubernetes' own; others are extended.
fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn is_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

/// `ValidateContainerResourceRequirements`: names, non-negative quantities, integer extended
/// resources, and requests within limits.
fn validate_resources(resources: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(res) = resources else { return vec![] };
    let lim_path = path.child("limits");
    let req_path = path.child("requests");
    let limits = quantities(res.field("limits"));
    let requests = quantities(res.field("requests"));
    let mut errs = Vec::new();
    for (name, q) in &limits {
        errs.extend(validate_resource_entry(name, q, &lim_path.key(name)));
    }
    for (name, q) in &requests {
        errs.extend(validate_resource_entry(name, q, &req_path.key(name)));
        let overcommit = is_native_resource(name) && !is_hugepages(name);
        match (limits.get(name), q) {
            (Some((_, Ok(limit))), (_, Ok(req))) => {
                if req != limit && !overcommit {
                    errs.push(FieldError::invalid(
                        &req_path,
                        json!(req.to_string()),
                        format!("must be equal to {name} limit of {limit}"),
                    ));
                } else if req > limit {
                    errs.push(FieldError::invalid(
                        &req_path,
                        json!(req.to_string()),
                        format!("must be less than or equal to {name} limit of {limit}"),
                    ));
                }
            }
            (None, _) if !overcommit => {
                errs.push(FieldError::required(
                    &lim_path,
                    "Limit must be set for non overcommitable resources",
                ));
            }
            _ => {}
        }
    }
    errs
}

/// A resource list with each quantity parsed; upstream rejects malformed ones while
/// decoding, here they surface as field errors carrying the same message.
fn quantities(list: Option<&Value>) -> BTreeMap<String, (String, Result<Quantity, QuantityError>)> {
    list.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    let q = Quantity::parse(&text);
                    (k.clone(), (text, q))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn validate_resource_entry(
    name: &str,
    (text, q): &(String, Result<Quantity, QuantityError>),
    path: &Path,
) -> Vec<FieldError> {
    let mut errs: Vec<FieldError> = names::is_qualified_name(name)
        .into_iter()
        .map(|m| FieldError::invalid(path, json!(name), m))
        .collect();
    if errs.is_empty() {
        if !name.contains('/') {
            if !["cpu", "memory", "ephemeral-storage"].contains(&name) && !is_hugepages(name) {
                errs.push(FieldError::invalid(
                    path,
                    json!(name),
                    "must be a standard resource for containers",
                ));
            }
        } else if !is_native_resource(name)
            && (name.starts_with("requests.")
                || !names::is_qualified_name(&format!("requests.{name}")).is_empty())
        {
            errs.push(FieldError::invalid(
                path,
                json!(name),
                "doesn't follow extended resource name standard",
            ));
        }
    }
    match q {
        Err(e) => errs.push(FieldError::invalid(path, json!(text), e.to_string())),
        Ok(q) if q.is_negative() => errs.push(FieldError::invalid(
            path,
            json!(q.to_string()),
            meta::IS_NEGATIVE_ERROR,
        )),
        Ok(q) if !is_native_resource(name) && q.milli_value() % 1000 != 0 => errs.push(
            FieldError::invalid(path, json!(q.to_string()), "must be an integer"),
        ),
        Ok(_) => {}
    }
    errs
}

fn id_range(v: Option<i64>, path: &Path) -> Option<FieldError> {
    let v = v?;
    (!(0..=i64::from(i32::MAX)).contains(&v)).then(|| {
        FieldError::invalid(
            path,
            json!(v),
            inclusive_range_error(0, i64::from(i32::MAX)),
        )
    })
}

fn validate_pod_security_context(sc: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(sc) = sc else { return vec![] };
    let mut errs = Vec::new();
    for field in ["runAsUser", "runAsGroup", "fsGroup"] {
        errs.extend(id_range(sc.int_of(field), &path.child(field)));
    }
    for (i, g) in sc.arr_of("supplementalGroups").iter().enumerate() {
        errs.extend(id_range(
            g.as_i64(),
            &path.child("supplementalGroups").index(i),
        ));
    }
    if let Some(policy) = sc.opt_str("fsGroupChangePolicy")
        && policy != "OnRootMismatch"
        && policy != "Always"
    {
        errs.push(not_supported(
            &path.child("fsGroupChangePolicy"),
            policy,
            &["OnRootMismatch", "Always"],
        ));
    }
    for (i, s) in sc.arr_of("sysctls").iter().enumerate() {
        if s.str_of("name").is_empty() {
            errs.push(FieldError::required(
                path.child("sysctls").index(i).child("name"),
                "",
            ));
        }
    }
    errs
}

fn validate_security_context(sc: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(sc) = sc else { return vec![] };
    let mut errs = Vec::new();
    for field in ["runAsUser", "runAsGroup"] {
        errs.extend(id_range(sc.int_of(field), &path.child(field)));
    }
    if sc.bool_of("allowPrivilegeEscalation") == Some(false) {
        if sc.bool_of("privileged") == Some(true) {
            errs.push(FieldError::invalid(
                path,
                sc.clone(),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let caps = at(sc, &["capabilities", "add"])
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")) {
            errs.push(FieldError::invalid(
                path,
                sc.clone(),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
    if let Some(pm) = sc.opt_str("procMount")
        && pm != "Default"
        && pm != "Unmasked"
    {
        errs.push(not_supported(
            &path.child("procMount"),
            pm,
            &["Default", "Unmasked"],
        ));
    }
    errs
}

pub fn validate_tolerations(tolerations: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let p = path.index(i);
        let key = t.str_of("key");
        let op = t.str_of("operator");
        let effect = t.str_of("effect");
        if !key.is_empty() {
            errs.extend(meta::validate_qualified_name(key, &p.child("key")));
        }
        if key.is_empty() && op != "Exists" {
            errs.push(FieldError::invalid(
                p.child("operator"),
                json!(op),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if t.has("tolerationSeconds") && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                p.child("effect"),
                json!(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        let value = t.str_of("value");
        match op {
            "" | "Equal" => {
                for m in names::is_valid_label_value(value) {
                    errs.push(FieldError::invalid(p.child("operator"), json!(value), m));
                }
            }
            "Exists" if !value.is_empty() => errs.push(FieldError::invalid(
                p.child("operator"),
                t.clone(),
                "value must be empty when `operator` is 'Exists'",
            )),
            "Exists" => {}
            _ => errs.push(not_supported(
                &p.child("operator"),
                op,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            errs.push(not_supported(
                &p.child("effect"),
                effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
    errs
}

fn validate_dns_config(config: Option<&Value>, policy: &str, path: &Path) -> Vec<FieldError> {
    let Some(config) = config else {
        return if policy == "None" {
            vec![FieldError::required(
                path,
                "must provide `dnsConfig` when `dnsPolicy` is None",
            )]
        } else {
            vec![]
        };
    };
    let mut errs = Vec::new();
    let servers = config.arr_of("nameservers");
    if policy == "None" && servers.is_empty() {
        errs.push(FieldError::required(
            path.child("nameservers"),
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
    }
    if servers.len() > 3 {
        errs.push(FieldError::invalid(
            path.child("nameservers"),
            Value::Array(servers.to_vec()),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in servers.iter().enumerate() {
        let s = ns.as_str().unwrap_or("");
        if !names::is_valid_ip(s) {
            errs.push(FieldError::invalid(
                path.child("nameservers").index(i),
                json!(s),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let searches = config.arr_of("searches");
    if searches.len() > 32 {
        errs.push(FieldError::invalid(
            path.child("searches"),
            Value::Array(searches.to_vec()),
            "must not have more than 32 search paths",
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        let s = s.as_str().unwrap_or("");
        let domain = if s == "." { s } else { s.trim_end_matches('.') };
        if domain != "." {
            errs.extend(dns1123_subdomain(domain, &path.child("searches").index(i)));
        }
    }
    for (i, o) in config.arr_of("options").iter().enumerate() {
        if o.str_of("name").is_empty() {
            errs.push(FieldError::required(
                path.child("options").index(i),
                "Option.Name must not be empty",
            ));
        }
    }
    errs
}

const UPDATABLE_POD_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// What a pod update may change: images, a shorter deadline, added tolerations, removed
/// scheduling gates. Everything else in the spec is frozen.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let null = Value::Null;
    let spec = new.field("spec").unwrap_or(&null);
    let old_spec = old.field("spec").unwrap_or(&null);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    for list in ["containers", "initContainers"] {
        let (cs, olds) = (spec.arr_of(list), old_spec.arr_of(list));
        if cs.len() != olds.len() {
            errs.push(FieldError::forbidden(
                path.child(list),
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in cs.iter().enumerate() {
            let image = c.str_of("image");
            if image.is_empty() {
                errs.push(FieldError::required(
                    path.child(list).index(i).child("image"),
                    "",
                ));
            }
            if image.trim() != image {
                errs.push(FieldError::invalid(
                    path.child(list).index(i).child("image"),
                    json!(image),
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }
    let deadline_path = path.child("activeDeadlineSeconds");
    match (
        spec.int_of("activeDeadlineSeconds"),
        old_spec.int_of("activeDeadlineSeconds"),
    ) {
        (None, Some(_)) => errs.push(FieldError::invalid(
            &deadline_path,
            Value::Null,
            "must not update from a positive integer to nil value",
        )),
        (Some(new), Some(old)) if new > old => errs.push(FieldError::invalid(
            &deadline_path,
            json!(new),
            "must be less than or equal to previous value",
        )),
        _ => {}
    }

    // Overlay the allowed changes onto the new spec; whatever still differs is forbidden.
    let mut munged = spec.clone();
    if let Some(m) = munged.as_object_mut() {
        for list in ["containers", "initContainers"] {
            if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                for (c, old_c) in cs.iter_mut().zip(old_spec.arr_of(list)) {
                    if let (Some(c), Some(img)) = (c.as_object_mut(), old_c.field("image")) {
                        c.insert("image".into(), img.clone());
                    }
                }
            }
        }
        for field in [
            "activeDeadlineSeconds",
            "tolerations",
            "schedulingGates",
            "terminationGracePeriodSeconds",
        ] {
            let keep_old = match field {
                "tolerations" => old_spec
                    .arr_of(field)
                    .iter()
                    .all(|t| spec.arr_of(field).contains(t)),
                "schedulingGates" => spec
                    .arr_of(field)
                    .iter()
                    .all(|g| old_spec.arr_of(field).contains(g)),
                "terminationGracePeriodSeconds" => {
                    old_spec.int_of(field).is_some_and(|g| g < 0) && spec.int_of(field) == Some(1)
                }
                _ => true,
            };
            if keep_old {
                match old_spec.field(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
        }
    }
    if strip_nulls(&munged) != strip_nulls(old_spec) {
        let changed = changed_fields(&munged, old_spec, "spec");
        errs.push(FieldError::forbidden(
            &path,
            format!(
                "pod updates may not change fields other than {UPDATABLE_POD_FIELDS}\n{}",
                changed.join("\n")
            ),
        ));
    }
    errs
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// The paths of leaves that differ, standing in for upstream's struct diff.
fn changed_fields(new: &Value, old: &Value, prefix: &str) -> Vec<String> {
    match (new, old) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let (x, y) = (
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    );
                    changed_fields(x, y, &format!("{prefix}.{k}"))
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| changed_fields(x, y, &format!("{prefix}[{i}]")))
            .collect(),
        (a, b) if a == b => vec![],
        _ => vec![format!("  {prefix}: {old} -> {new}")],
    }
}
