//! Core (`v1`) kinds other than pods: Services, ConfigMaps and Secrets, Namespaces, volumes
//! and claims, Nodes, Events and Endpoints, with their update rules.

use super::FieldError;
use super::meta::{self, immutable, validate_label_selector, validate_labels};
use super::names;
use super::path::{Get, Path, at};
use super::pod::{port_num_or_name, validate_pod_template_spec};
use super::quantity::Quantity;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const MAX_SECRET_SIZE: usize = 1024 * 1024;
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const INVALID_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
const PV_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "glusterfs",
    "flocker",
    "nfs",
    "rbd",
    "quobyte",
    "cinder",
    "cephfs",
    "iscsi",
    "fc",
    "azureFile",
    "azureDisk",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "local",
    "storageos",
    "csi",
    "flexVolume",
];

fn spec_of(obj: &Value) -> &Value {
    obj.field("spec").unwrap_or(&Value::Null)
}

fn is_headless(spec: &Value) -> bool {
    spec.str_of("clusterIP") == "None"
}

pub fn validate_service(obj: &Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    let path = Path::new("spec");
    let ty = spec.str_of("type");
    let ports = spec.arr_of("ports");
    let headless = is_headless(spec);
    let mut errs = Vec::new();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required(path.child("ports"), ""));
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => errs.push(FieldError::invalid(
            path.child("clusterIP"),
            json!("None"),
            format!("may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            for field in ["clusterIPs", "ipFamilies"] {
                if !spec.arr_of(field).is_empty() {
                    errs.push(FieldError::forbidden(
                        path.child(field),
                        "may not be set for ExternalName services",
                    ));
                }
            }
            if spec.has("ipFamilyPolicy") {
                errs.push(FieldError::forbidden(
                    path.child("ipFamilyPolicy"),
                    "may not be set for ExternalName services",
                ));
            }
            let name = spec.str_of("externalName");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                errs.push(FieldError::required(path.child("externalName"), ""));
            } else {
                errs.extend(
                    names::is_dns1123_subdomain(cname)
                        .into_iter()
                        .map(|m| FieldError::invalid(path.child("externalName"), json!(cname), m)),
                );
            }
        }
        _ => {}
    }
    let mut port_names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        errs.extend(validate_service_port(
            port,
            ports.len() > 1,
            &mut port_names,
            &path.child("ports").index(i),
        ));
        if ty == "LoadBalancer" && port.int_of("port") == Some(10250) {
            errs.push(FieldError::invalid(
                path.child("ports").index(i),
                json!(10250),
                "may not expose port 10250 externally since it is used by kubelet",
            ));
        }
    }
    if spec.has("selector") {
        errs.extend(validate_labels(
            spec.field("selector"),
            &path.child("selector"),
        ));
    }
    let affinity = spec.str_of("sessionAffinity");
    match affinity {
        "" => errs.push(FieldError::required(path.child("sessionAffinity"), "")),
        "ClientIP" => {
            let timeout = at(
                spec,
                &["sessionAffinityConfig", "clientIP", "timeoutSeconds"],
            )
            .and_then(Value::as_i64);
            if let Some(t) = timeout.filter(|t| !(1..=86400).contains(t)) {
                errs.push(FieldError::invalid(
                    path.children(&["sessionAffinityConfig", "clientIP", "timeoutSeconds"]),
                    json!(t),
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        "None" if spec.has("sessionAffinityConfig") => errs.push(FieldError::forbidden(
            path.child("sessionAffinityConfig"),
            "must not be set when session affinity is None",
        )),
        "None" => {}
        other => errs.push(FieldError::not_supported(
            path.child("sessionAffinity"),
            json!(other),
            &["ClientIP", "None"],
        )),
    }
    errs.extend(validate_cluster_ips(spec, &path));
    for (i, ip) in spec.arr_of("externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        if !names::is_valid_ip(ip) {
            errs.push(FieldError::invalid(
                path.child("externalIPs").index(i),
                json!(ip),
                INVALID_IP,
            ));
        }
    }
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if ty.is_empty() {
        errs.push(FieldError::required(path.child("type"), ""));
    } else if !types.contains(&ty) {
        errs.push(FieldError::not_supported(
            path.child("type"),
            json!(ty),
            &types,
        ));
    }
    let mut node_ports = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.child("ports").index(i);
        let protocol = port.str_of("protocol");
        let node_port = port.int_of("nodePort").unwrap_or(0);
        if node_port != 0 {
            if ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    p.child("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(1..=65535).contains(&node_port) {
                // A valid port number; whether it lies in the server's node port range
                // (`--service-node-port-range`) is the allocator's check.
                errs.push(FieldError::invalid(
                    p.child("nodePort"),
                    json!(node_port),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if !node_ports.insert((protocol, node_port)) {
                errs.push(FieldError::duplicate(p.child("nodePort"), json!(node_port)));
            }
        }
        let number = port.int_of("port").unwrap_or(0);
        if !seen_ports.insert((protocol, number)) {
            errs.push(FieldError::duplicate(
                &p,
                json!({"port": number, "protocol": protocol}),
            ));
        }
    }
    let external = matches!(ty, "LoadBalancer" | "NodePort")
        || (ty == "ClusterIP" && !spec.arr_of("externalIPs").is_empty());
    match spec.opt_str("externalTrafficPolicy") {
        Some(p) if !external && !p.is_empty() => errs.push(FieldError::invalid(
            path.child("externalTrafficPolicy"),
            json!(p),
            "may only be set for externally-accessible services",
        )),
        Some(p) if !["", "Cluster", "Local"].contains(&p) => errs.push(FieldError::not_supported(
            path.child("externalTrafficPolicy"),
            json!(p),
            &["Cluster", "Local"],
        )),
        None if external => errs.push(FieldError::required(
            path.child("externalTrafficPolicy"),
            "",
        )),
        _ => {}
    }
    if let Some(p) = spec.opt_str("internalTrafficPolicy")
        && p != "Cluster"
        && p != "Local"
    {
        errs.push(FieldError::not_supported(
            path.child("internalTrafficPolicy"),
            json!(p),
            &["Cluster", "Local"],
        ));
    }
    errs
}

fn validate_service_port(
    port: &Value,
    require_name: bool,
    seen: &mut BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = port.str_of("name");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    } else if !name.is_empty() {
        errs.extend(
            names::is_dns1123_label(name)
                .into_iter()
                .map(|m| FieldError::invalid(path.child("name"), json!(name), m)),
        );
        if !seen.insert(name.to_string()) {
            errs.push(FieldError::duplicate(path.child("name"), json!(name)));
        }
    }
    let number = port.int_of("port").unwrap_or(0);
    errs.extend(
        names::is_valid_port_num(number)
            .into_iter()
            .map(|m| FieldError::invalid(path.child("port"), json!(number), m)),
    );
    let protocol = port.str_of("protocol");
    if protocol.is_empty() {
        errs.push(FieldError::required(path.child("protocol"), ""));
    } else if !PROTOCOLS.contains(&protocol) {
        errs.push(FieldError::not_supported(
            path.child("protocol"),
            json!(protocol),
            PROTOCOLS,
        ));
    }
    errs.extend(port_num_or_name(
        port.field("targetPort"),
        &path.child("targetPort"),
    ));
    if let Some(app) = port.opt_str("appProtocol") {
        errs.extend(meta::validate_qualified_name(
            app,
            &path.child("appProtocol"),
        ));
    }
    errs
}

/// Cluster IPs as users may set them: empty (allocate), `None` (headless) or literal IPs.
/// Upstream copies `clusterIP` into `clusterIPs` before validating, so errors name the list.
fn validate_cluster_ips(spec: &Value, path: &Path) -> Vec<FieldError> {
    let ips: Vec<&str> = match spec.arr_of("clusterIPs") {
        [] => Some(spec.str_of("clusterIP"))
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect(),
        list => list.iter().map(|v| v.as_str().unwrap_or("")).collect(),
    };
    let ppath = path.child("clusterIPs");
    let mut errs = Vec::new();
    let primary = spec.str_of("clusterIP");
    if !primary.is_empty() && ips.first().is_some_and(|first| *first != primary) {
        errs.push(FieldError::invalid(
            &ppath,
            json!(ips),
            "element [0] must match clusterIP",
        ));
    }
    for (i, ip) in ips.iter().enumerate() {
        if *ip == "None" {
            if i > 0 || ips.len() > 1 {
                errs.push(FieldError::invalid(
                    ppath.index(i),
                    json!(ip),
                    "'None' must be the first and only value",
                ));
            }
        } else if !names::is_valid_ip(ip) {
            errs.push(FieldError::invalid(ppath.index(i), json!(ip), INVALID_IP));
        }
    }
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            &ppath,
            json!(ips),
            "may only hold up to 2 values",
        ));
    }
    if let Some(policy) = spec.opt_str("ipFamilyPolicy") {
        let policies = ["SingleStack", "PreferDualStack", "RequireDualStack"];
        if !policies.contains(&policy) {
            errs.push(FieldError::not_supported(
                path.child("ipFamilyPolicy"),
                json!(policy),
                &policies,
            ));
        }
    }
    for (i, fam) in spec.arr_of("ipFamilies").iter().enumerate() {
        let fam = fam.as_str().unwrap_or("");
        if fam != "IPv4" && fam != "IPv6" {
            errs.push(FieldError::not_supported(
                path.child("ipFamilies").index(i),
                json!(fam),
                &["IPv4", "IPv6"],
            ));
        }
    }
    errs
}

/// Cluster IPs may not move once allocated, except to or from `ExternalName`.
pub fn validate_service_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let (spec, old_spec) = (spec_of(obj), spec_of(old));
    if spec.str_of("type") == "ExternalName" || old_spec.str_of("type") == "ExternalName" {
        return vec![];
    }
    let ips = |s: &Value| -> Vec<String> {
        match s.arr_of("clusterIPs") {
            [] => Some(s.str_of("clusterIP").to_string())
                .filter(|x| !x.is_empty())
                .into_iter()
                .collect(),
            l => l
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
        }
    };
    let (new_ips, old_ips) = (ips(spec), ips(old_spec));
    match (new_ips.first(), old_ips.first()) {
        (Some(n), Some(o)) if n != o => {
            vec![FieldError::invalid(
                "spec.clusterIPs[0]",
                json!(new_ips),
                "may not change once set",
            )]
        }
        _ => vec![],
    }
}

fn data_size(v: Option<&Value>, base64_values: bool) -> usize {
    v.and_then(Value::as_object).map_or(0, |m| {
        m.values()
            .filter_map(Value::as_str)
            .map(|s| {
                if base64_values {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_or(s.len(), |b| b.len())
                } else {
                    s.len()
                }
            })
            .sum()
    })
}

fn config_keys(v: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let keys: Vec<&String> = v
        .and_then(Value::as_object)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.into_iter()
        .flat_map(|k| {
            names::is_config_map_key(k)
                .into_iter()
                .map(move |m| FieldError::invalid(path.key(k), json!(k), m))
        })
        .collect()
}

pub fn validate_config_map(obj: &Value) -> Vec<FieldError> {
    let data = obj.field("data");
    let binary = obj.field("binaryData");
    let mut errs = config_keys(data, &Path::new("data"));
    if let (Some(d), Some(b)) = (
        data.and_then(Value::as_object),
        binary.and_then(Value::as_object),
    ) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            errs.push(FieldError::invalid(
                Path::new("data").key(k),
                json!(k),
                "duplicate of key present in binaryData",
            ));
        }
    }
    errs.extend(config_keys(binary, &Path::new("binaryData")));
    if data_size(data, false) + data_size(binary, true) > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("", MAX_SECRET_SIZE));
    }
    errs
}

pub fn validate_secret(obj: &Value) -> Vec<FieldError> {
    let data = obj.field("data");
    let data_path = Path::new("data");
    let mut errs = config_keys(data, &data_path);
    if data_size(data, true) > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long(&data_path, MAX_SECRET_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.has(k));
    let required = |k: &str| FieldError::required(data_path.key(k), "");
    match obj.str_of("type") {
        "kubernetes.io/service-account-token" => {
            let sa = at(
                obj,
                &[
                    "metadata",
                    "annotations",
                    "kubernetes.io/service-account.name",
                ],
            )
            .and_then(Value::as_str);
            if sa.is_none_or(str::is_empty) {
                errs.push(FieldError::required(
                    Path::new("metadata.annotations").key("kubernetes.io/service-account.name"),
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if obj.str_of("type") == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            match data.and_then(|d| d.opt_str(key)) {
                None => errs.push(required(key)),
                Some(encoded) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap_or_default();
                    let parsed: Result<serde_json::Map<String, Value>, _> =
                        serde_json::from_slice(&bytes);
                    if let Err(e) = parsed {
                        errs.push(FieldError::invalid(
                            data_path.key(key),
                            json!("<secret contents redacted>"),
                            e.to_string(),
                        ));
                    }
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(required("username"));
            errs.push(required("password"));
        }
        "kubernetes.io/ssh-auth"
            if data
                .and_then(|d| d.opt_str("ssh-privatekey"))
                .is_none_or(str::is_empty) =>
        {
            errs.push(required("ssh-privatekey"))
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    errs.push(required(key));
                }
            }
        }
        _ => {}
    }
    errs
}

/// Once `immutable: true` is set on a ConfigMap or Secret, its payload and the flag freeze.
pub fn validate_immutable_data_update(obj: &Value, old: &Value, kind: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if kind == "Secret" {
        errs.extend(immutable(
            obj.field("type"),
            old.field("type"),
            &Path::new("type"),
        ));
    }
    if old.bool_of("immutable") != Some(true) {
        return errs;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if obj.bool_of("immutable") != Some(true) {
        errs.push(FieldError::forbidden("immutable", MSG));
    }
    let fields: &[&str] = if kind == "Secret" {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    for f in fields {
        let norm = |v: &Value| {
            v.field(f)
                .filter(|d| d.as_object().is_some_and(|m| !m.is_empty()))
                .cloned()
        };
        if norm(obj) != norm(old) {
            errs.push(FieldError::forbidden(*f, MSG));
        }
    }
    errs
}

pub fn validate_namespace(obj: &Value) -> Vec<FieldError> {
    let path = Path::new("spec.finalizers");
    let mut errs = Vec::new();
    for f in spec_of(obj).arr_of("finalizers") {
        let f = f.as_str().unwrap_or("");
        errs.extend(meta::validate_qualified_name(f, &path));
        if !f.contains('/') && !["kubernetes", "orphan", "foregroundDeletion"].contains(&f) {
            errs.push(FieldError::invalid(
                &path,
                json!(f),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    errs
}

fn access_modes(spec: &Value, path: &Path, required_detail: &str) -> Vec<FieldError> {
    let modes: Vec<&str> = spec
        .arr_of("accessModes")
        .iter()
        .map(|m| m.as_str().unwrap_or(""))
        .collect();
    let p = path.child("accessModes");
    let mut errs = Vec::new();
    if modes.is_empty() {
        errs.push(FieldError::required(&p, required_detail));
    }
    for m in &modes {
        if !ACCESS_MODES.contains(m) {
            errs.push(FieldError::not_supported(&p, json!(m), ACCESS_MODES));
        }
    }
    let rwop = modes.contains(&"ReadWriteOncePod");
    if rwop
        && modes
            .iter()
            .any(|m| *m != "ReadWriteOncePod" && ACCESS_MODES.contains(m))
    {
        errs.push(FieldError::forbidden(
            &p,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    errs
}

fn positive_quantity(v: Option<&Value>, path: &Path) -> Option<FieldError> {
    let s = match v? {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match Quantity::parse(&s) {
        Err(e) => Some(FieldError::invalid(path, json!(s), e.to_string())),
        Ok(q) if q <= Quantity::from_int(0) => Some(FieldError::invalid(
            path,
            json!(q.to_string()),
            "must be greater than zero",
        )),
        Ok(_) => None,
    }
}

pub fn validate_pvc_spec(spec: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = access_modes(spec, path, "at least 1 access mode is required");
    if spec.has("selector") {
        errs.extend(validate_label_selector(
            spec.field("selector"),
            &path.child("selector"),
        ));
    }
    let storage_path = path.child("resources").key("storage");
    match at(spec, &["resources", "requests", "storage"]) {
        None => errs.push(FieldError::required(&storage_path, "")),
        some => errs.extend(positive_quantity(some, &storage_path)),
    }
    if let Some(class) = spec.opt_str("storageClassName").filter(|c| !c.is_empty()) {
        errs.extend(
            names::is_dns1123_subdomain(class)
                .into_iter()
                .map(|m| FieldError::invalid(path.child("storageClassName"), json!(class), m)),
        );
    }
    if let Some(mode) = spec.opt_str("volumeMode")
        && mode != "Block"
        && mode != "Filesystem"
    {
        errs.push(FieldError::not_supported(
            path.child("volumeMode"),
            json!(mode),
            &["Block", "Filesystem"],
        ));
    }
    errs
}

pub fn validate_pvc(obj: &Value) -> Vec<FieldError> {
    validate_pvc_spec(spec_of(obj), &Path::new("spec"))
}

/// A claim's spec is frozen after creation, except binding (`volumeName`, once), a class for a
/// claim without one, growing a bound claim's storage request, and its volume attributes class.
pub fn validate_pvc_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let (spec, old_spec) = (spec_of(obj), spec_of(old));
    let bound = at(obj, &["status", "phase"]).and_then(Value::as_str) == Some("Bound");
    let strip = |s: &Value, is_old: bool| {
        let mut s = s.clone();
        if let Some(m) = s.as_object_mut() {
            m.remove("volumeAttributesClassName");
            if is_old || old_spec.str_of("volumeName").is_empty() {
                m.remove("volumeName");
            }
            // A claim without a class may be given one later (upstream's retroactive default
            // StorageClass assignment, GA in 1.28).
            if old_spec
                .field("storageClassName")
                .is_none_or(Value::is_null)
            {
                m.remove("storageClassName");
            }
            if bound
                && let Some(req) = m
                    .get_mut("resources")
                    .and_then(|r| r.get_mut("requests"))
                    .and_then(Value::as_object_mut)
            {
                req.remove("storage");
            }
            m.retain(|_, v| !v.is_null());
        }
        s
    };
    let mut errs = Vec::new();
    let (new_s, mut old_s) = (strip(spec, false), strip(old_spec, true));
    if !old_spec.str_of("volumeName").is_empty()
        && let (Some(o), Some(v)) = (old_s.as_object_mut(), old_spec.field("volumeName"))
    {
        o.insert("volumeName".into(), v.clone());
    }
    if new_s != old_s {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let size = |s: &Value| {
        at(s, &["resources", "requests", "storage"])
            .and_then(Value::as_str)
            .and_then(|q| Quantity::parse(q).ok())
    };
    if let (Some(new), Some(old)) = (size(spec), size(old_spec))
        && new < old
    {
        errs.push(FieldError::forbidden(
            "spec.resources.requests.storage",
            "field can not be less than previous value",
        ));
    }
    errs
}

pub fn validate_pv(obj: &Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    let path = Path::new("spec");
    let mut errs = access_modes(spec, &path, "");
    let capacity = spec.obj_of("capacity");
    if capacity.is_none_or(|c| c.is_empty()) {
        errs.push(FieldError::required(path.child("capacity"), ""));
    }
    if capacity.is_none_or(|c| !c.contains_key("storage") || c.len() > 1) {
        errs.push(FieldError::not_supported(
            path.child("capacity"),
            spec.field("capacity").cloned().unwrap_or(Value::Null),
            &["storage"],
        ));
    }
    for (k, v) in capacity.into_iter().flatten() {
        errs.extend(positive_quantity(Some(v), &path.child("capacity").key(k)));
    }
    if let Some(policy) = spec.opt_str("persistentVolumeReclaimPolicy")
        && !["", "Delete", "Recycle", "Retain"].contains(&policy)
    {
        errs.push(FieldError::not_supported(
            path.child("persistentVolumeReclaimPolicy"),
            json!(policy),
            &["Delete", "Recycle", "Retain"],
        ));
    }
    if let Some(class) = spec.opt_str("storageClassName").filter(|c| !c.is_empty()) {
        errs.extend(
            names::is_dns1123_subdomain(class)
                .into_iter()
                .map(|m| FieldError::invalid(path.child("storageClassName"), json!(class), m)),
        );
    }
    let mut found = false;
    for src in PV_SOURCES {
        if spec.has(src) {
            if found {
                errs.push(FieldError::forbidden(
                    path.child(src),
                    "may not specify more than 1 volume type",
                ));
            }
            found = true;
        }
    }
    if !found {
        errs.push(FieldError::required(&path, "must specify a volume type"));
    }
    if let Some(mode) = spec.opt_str("volumeMode")
        && mode != "Block"
        && mode != "Filesystem"
    {
        errs.push(FieldError::not_supported(
            path.child("volumeMode"),
            json!(mode),
            &["Block", "Filesystem"],
        ));
    }
    errs
}

pub fn validate_node(obj: &Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    for (i, t) in spec.arr_of("taints").iter().enumerate() {
        let p = path.child("taints").index(i);
        errs.extend(meta::validate_qualified_name(
            t.str_of("key"),
            &p.child("key"),
        ));
        let value = t.str_of("value");
        errs.extend(
            names::is_valid_label_value(value)
                .into_iter()
                .map(|m| FieldError::invalid(p.child("value"), json!(value), m)),
        );
        let effects = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
        match t.str_of("effect") {
            "" => errs.push(FieldError::required(p.child("effect"), "")),
            e if !effects.contains(&e) => errs.push(FieldError::not_supported(
                p.child("effect"),
                json!(e),
                &effects,
            )),
            _ => {}
        }
    }
    errs
}

pub fn validate_event(obj: &Value) -> Vec<FieldError> {
    let namespace = at(obj, &["metadata", "namespace"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let involved_ns = at(obj, &["involvedObject", "namespace"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut errs = Vec::new();
    let legacy = !obj.has("eventTime");
    let mismatch = if involved_ns.is_empty() {
        legacy && !namespace.is_empty() && namespace != "default"
    } else {
        namespace != involved_ns
    };
    if mismatch {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            json!(involved_ns),
            "does not match event.namespace",
        ));
    }
    errs.extend(
        names::is_dns1123_subdomain(namespace)
            .into_iter()
            .map(|m| FieldError::invalid("namespace", json!(namespace), m)),
    );
    errs
}

pub fn validate_endpoints(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, subset) in obj.arr_of("subsets").iter().enumerate() {
        let sp = Path::new("subsets").index(i);
        for field in ["addresses", "notReadyAddresses"] {
            for (j, addr) in subset.arr_of(field).iter().enumerate() {
                let ip = addr.str_of("ip");
                if !names::is_valid_ip(ip) {
                    errs.push(FieldError::invalid(
                        sp.child(field).index(j).child("ip"),
                        json!(ip),
                        INVALID_IP,
                    ));
                }
            }
        }
        let ports = subset.arr_of("ports");
        for (j, port) in ports.iter().enumerate() {
            let p = sp.child("ports").index(j);
            let name = port.str_of("name");
            if ports.len() > 1 && name.is_empty() {
                errs.push(FieldError::required(p.child("name"), ""));
            } else if !name.is_empty() {
                errs.extend(
                    names::is_dns1123_label(name)
                        .into_iter()
                        .map(|m| FieldError::invalid(p.child("name"), json!(name), m)),
                );
            }
            let n = port.int_of("port").unwrap_or(0);
            errs.extend(
                names::is_valid_port_num(n)
                    .into_iter()
                    .map(|m| FieldError::invalid(p.child("port"), json!(n), m)),
            );
            match port.str_of("protocol") {
                "" => errs.push(FieldError::required(p.child("protocol"), "")),
                pr if !PROTOCOLS.contains(&pr) => errs.push(FieldError::not_supported(
                    p.child("protocol"),
                    json!(pr),
                    PROTOCOLS,
                )),
                _ => {}
            }
        }
    }
    errs
}

pub fn validate_pod_template(obj: &Value) -> Vec<FieldError> {
    validate_pod_template_spec(
        obj.field("template").unwrap_or(&Value::Null),
        &Path::new("template"),
    )
}

/// ResourceQuota `hard` and LimitRange limits: known names and parsable, non-negative amounts.
pub fn validate_resource_list(list: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in list.and_then(Value::as_object).into_iter().flatten() {
        let p = path.key(k);
        errs.extend(meta::validate_qualified_name(k, &p));
        let s = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        match Quantity::parse(&s) {
            Err(e) => errs.push(FieldError::invalid(&p, json!(s), e.to_string())),
            Ok(q) if q.is_negative() => errs.push(FieldError::invalid(
                &p,
                json!(q.to_string()),
                meta::IS_NEGATIVE_ERROR,
            )),
            Ok(_) => {}
        }
    }
    errs
}

pub fn validate_resource_quota(obj: &Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    let mut errs = validate_resource_list(spec.field("hard"), &Path::new("spec.hard"));
    let scopes = [
        "BestEffort",
        "CrossNamespacePodAffinity",
        "NotBestEffort",
        "NotTerminating",
        "PriorityClass",
        "Terminating",
    ];
    for s in spec.arr_of("scopes") {
        let s = s.as_str().unwrap_or("");
        if !scopes.contains(&s) {
            errs.push(FieldError::not_supported("spec.scopes", json!(s), &scopes));
        }
    }
    errs
}

pub fn validate_limit_range(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, item) in spec_of(obj).arr_of("limits").iter().enumerate() {
        let p = Path::new("spec.limits").index(i);
        let types = ["Container", "Pod", "PersistentVolumeClaim"];
        let ty = item.str_of("type");
        if ty.is_empty() {
            errs.push(FieldError::required(p.child("type"), ""));
        } else if !types.contains(&ty) {
            errs.push(FieldError::not_supported(
                p.child("type"),
                json!(ty),
                &types,
            ));
        }
        for field in [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            errs.extend(validate_resource_list(item.field(field), &p.child(field)));
        }
    }
    errs
}

pub fn validate_service_account(obj: &Value) -> Vec<FieldError> {
    obj.arr_of("imagePullSecrets")
        .iter()
        .enumerate()
        .filter(|(_, s)| s.str_of("name").is_empty())
        .map(|(i, _)| {
            FieldError::required(Path::new("imagePullSecrets").index(i).child("name"), "")
        })
        .collect()
}
