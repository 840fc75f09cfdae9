//! The remaining API groups: RBAC, coordination, scheduling, networking, storage,
//! admission webhooks and CRD names.

use super::FieldError;
use super::meta::{immutable, validate_label_selector};
use super::names;
use super::path::{Get, Path, at};
use super::pod::port_num_or_name;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;
const SYSTEM_PRIORITY_CLASSES: &[(&str, i64)] = &[
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

pub fn validate_rbac_rules(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, rule) in obj.arr_of("rules").iter().enumerate() {
        let p = Path::new("rules").index(i);
        if rule.arr_of("verbs").is_empty() {
            errs.push(FieldError::required(
                p.child("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = rule.arr_of("nonResourceURLs");
        if !urls.is_empty() {
            let urls_value = Value::Array(urls.to_vec());
            if namespaced {
                errs.push(FieldError::invalid(
                    p.child("nonResourceURLs"),
                    urls_value.clone(),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|f| !rule.arr_of(f).is_empty())
            {
                errs.push(FieldError::invalid(
                    p.child("nonResourceURLs"),
                    urls_value,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule.arr_of("apiGroups").is_empty() {
            errs.push(FieldError::required(
                p.child("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if rule.arr_of("resources").is_empty() {
            errs.push(FieldError::required(
                p.child("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    if let Some(agg) = obj.field("aggregationRule") {
        if agg.arr_of("clusterRoleSelectors").is_empty() {
            errs.push(FieldError::required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        for (i, sel) in agg.arr_of("clusterRoleSelectors").iter().enumerate() {
            errs.extend(validate_label_selector(
                Some(sel),
                &Path::new("aggregationRule.clusterRoleSelectors").index(i),
            ));
        }
    }
    errs
}

pub fn validate_role_binding(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let role_ref = obj.field("roleRef").unwrap_or(&Value::Null);
    let rp = Path::new("roleRef");
    let mut errs = Vec::new();
    let group = role_ref.str_of("apiGroup");
    if group != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            rp.child("apiGroup"),
            json!(group),
            &[RBAC_GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = role_ref.str_of("kind");
    if !kinds.contains(&kind) {
        errs.push(FieldError::not_supported(
            rp.child("kind"),
            json!(kind),
            kinds,
        ));
    }
    let name = role_ref.str_of("name");
    if name.is_empty() {
        errs.push(FieldError::required(rp.child("name"), ""));
    } else {
        errs.extend(
            names::is_valid_path_segment_name(name)
                .into_iter()
                .map(|m| FieldError::invalid(rp.child("name"), json!(name), m)),
        );
    }
    for (i, s) in obj.arr_of("subjects").iter().enumerate() {
        let p = Path::new("subjects").index(i);
        let name = s.str_of("name");
        if name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        let group = s.str_of("apiGroup");
        match s.str_of("kind") {
            "ServiceAccount" => {
                if !name.is_empty() {
                    errs.extend(
                        names::is_dns1123_subdomain(name)
                            .into_iter()
                            .map(|m| FieldError::invalid(p.child("name"), json!(name), m)),
                    );
                }
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(
                        p.child("apiGroup"),
                        json!(group),
                        &[""],
                    ));
                }
                if !namespaced && s.str_of("namespace").is_empty() {
                    errs.push(FieldError::required(p.child("namespace"), ""));
                }
            }
            "User" | "Group" if group != RBAC_GROUP => errs.push(FieldError::not_supported(
                p.child("apiGroup"),
                json!(group),
                &[RBAC_GROUP],
            )),
            "User" | "Group" => {}
            other => errs.push(FieldError::not_supported(
                p.child("kind"),
                json!(other),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    errs
}

pub fn validate_role_binding_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let strip = |v: &Value| v.field("roleRef").cloned();
    if strip(obj) == strip(old) {
        return vec![];
    }
    vec![FieldError::invalid(
        "roleRef",
        strip(obj).unwrap_or(Value::Null),
        "cannot change roleRef",
    )]
}

pub fn validate_lease(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let mut errs = Vec::new();
    if let Some(d) = spec.int_of("leaseDurationSeconds").filter(|d| *d <= 0) {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            json!(d),
            "must be greater than 0",
        ));
    }
    if let Some(t) = spec.int_of("leaseTransitions").filter(|t| *t < 0) {
        errs.push(FieldError::invalid(
            "spec.leaseTransitions",
            json!(t),
            "must be greater than or equal to 0",
        ));
    }
    errs
}

pub fn validate_priority_class(obj: &Value) -> Vec<FieldError> {
    let name = at(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let value = obj.int_of("value").unwrap_or(0);
    let mut errs = Vec::new();
    if name.starts_with("system-") {
        let problem = match SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _)| *n == name) {
            None => Some(format!("{name} is not a known system priority class")),
            Some((_, v)) if *v != value => {
                Some(format!("value of {name} PriorityClass must be {v}"))
            }
            Some(_) if obj.bool_of("globalDefault") == Some(true) => Some(format!(
                "globalDefault of {name} PriorityClass must be false"
            )),
            Some(_) => None,
        };
        if let Some(p) = problem {
            errs.push(FieldError::forbidden(
                "metadata.name",
                format!("priority class names with 'system-' prefix are reserved for system use only. error: {p}"),
            ));
        }
    } else if value > HIGHEST_USER_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        ));
    }
    if let Some(p) = obj.opt_str("preemptionPolicy")
        && p != "PreemptLowerPriority"
        && p != "Never"
    {
        errs.push(FieldError::not_supported(
            "preemptionPolicy",
            json!(p),
            &["Never", "PreemptLowerPriority"],
        ));
    }
    errs
}

pub fn validate_priority_class_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if obj.int_of("value") != old.int_of("value") {
        errs.push(FieldError::forbidden(
            "value",
            "may not be changed in an update.",
        ));
    }
    errs.extend(immutable(
        obj.field("preemptionPolicy"),
        old.field("preemptionPolicy"),
        &Path::new("preemptionPolicy"),
    ));
    errs
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let max = if ip.contains(':') { 128 } else { 32 };
    names::is_valid_ip(ip) && bits.parse::<u8>().is_ok_and(|b| b <= max) && !bits.starts_with('+')
}

pub fn validate_network_policy(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = validate_label_selector(spec.field("podSelector"), &path.child("podSelector"));
    for (dir, peers_field) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec.arr_of(dir).iter().enumerate() {
            let rp = path.child(dir).index(i);
            for (j, port) in rule.arr_of("ports").iter().enumerate() {
                errs.extend(validate_network_policy_port(
                    port,
                    &rp.child("ports").index(j),
                ));
            }
            for (j, peer) in rule.arr_of(peers_field).iter().enumerate() {
                errs.extend(validate_network_policy_peer(
                    peer,
                    &rp.child(peers_field).index(j),
                ));
            }
        }
    }
    let types = spec.arr_of("policyTypes");
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            errs.push(FieldError::not_supported(
                path.child("policyTypes").index(i),
                json!(t),
                &["Ingress", "Egress"],
            ));
        }
    }
    if types.len() > 2 {
        errs.push(FieldError::invalid(
            path.child("policyTypes"),
            Value::Array(types.to_vec()),
            "may not specify more than two policyTypes",
        ));
    }
    errs
}

fn validate_network_policy_port(port: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(proto) = port.opt_str("protocol")
        && !["TCP", "UDP", "SCTP"].contains(&proto)
    {
        errs.push(FieldError::not_supported(
            path.child("protocol"),
            json!(proto),
            &["TCP", "UDP", "SCTP"],
        ));
    }
    let p = port.field("port");
    if let Some(p) = p {
        errs.extend(port_num_or_name(Some(p), &path.child("port")));
    }
    if let Some(end) = port.int_of("endPort") {
        match p {
            Some(Value::Number(n)) => {
                if end < n.as_i64().unwrap_or(0) {
                    errs.push(FieldError::invalid(
                        path.child("endPort"),
                        json!(end),
                        "must be greater than or equal to `port`",
                    ));
                }
            }
            Some(_) => errs.push(FieldError::forbidden(
                path.child("endPort"),
                "may not be specified when `port` is non-numeric",
            )),
            None => errs.push(FieldError::required(
                path.child("port"),
                "must be specified when `endPort` is specified",
            )),
        }
    }
    errs
}

fn validate_network_policy_peer(peer: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut count = 0;
    for sel in ["podSelector", "namespaceSelector"] {
        if peer.has(sel) {
            count += 1;
            errs.extend(validate_label_selector(peer.field(sel), &path.child(sel)));
        }
    }
    if let Some(block) = peer.field("ipBlock") {
        if count > 0 {
            errs.push(FieldError::forbidden(
                path,
                "may not specify both ipBlock and another peer",
            ));
        }
        count += 1;
        let cidr = block.str_of("cidr");
        if cidr.is_empty() {
            errs.push(FieldError::required(
                path.children(&["ipBlock", "cidr"]),
                "",
            ));
        } else if !valid_cidr(cidr) {
            errs.push(FieldError::invalid(
                path.children(&["ipBlock", "cidr"]),
                json!(cidr),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
    if count == 0 {
        errs.push(FieldError::required(path, "must specify a peer"));
    }
    errs
}

pub fn validate_ingress(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    if let Some(b) = spec.field("defaultBackend") {
        errs.extend(validate_ingress_backend(b, &path.child("defaultBackend")));
    }
    if spec.arr_of("rules").is_empty() && !spec.has("defaultBackend") {
        errs.push(FieldError::invalid(
            &path,
            json!(spec),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, rule) in spec.arr_of("rules").iter().enumerate() {
        let rp = path.child("rules").index(i);
        let host = rule.str_of("host");
        if !host.is_empty() {
            if names::is_valid_ip(host) {
                errs.push(FieldError::invalid(
                    rp.child("host"),
                    json!(host),
                    "must be a DNS name, not an IP address",
                ));
            }
            let check = host.strip_prefix("*.").unwrap_or(host);
            errs.extend(
                names::is_dns1123_subdomain(check)
                    .into_iter()
                    .map(|m| FieldError::invalid(rp.child("host"), json!(host), m)),
            );
        }
        let Some(http) = rule.field("http") else {
            continue;
        };
        let hp = rp.child("http");
        if http.arr_of("paths").is_empty() {
            errs.push(FieldError::required(hp.child("paths"), ""));
        }
        for (j, p) in http.arr_of("paths").iter().enumerate() {
            let pp = hp.child("paths").index(j);
            let path_str = p.str_of("path");
            match p.opt_str("pathType") {
                None => errs.push(FieldError::required(
                    pp.child("pathType"),
                    "pathType must be specified",
                )),
                Some("Exact" | "Prefix") if !path_str.starts_with('/') => {
                    errs.push(FieldError::invalid(
                        pp.child("path"),
                        json!(path_str),
                        "must be an absolute path",
                    ))
                }
                Some("Exact" | "Prefix" | "ImplementationSpecific") => {}
                Some(other) => errs.push(FieldError::not_supported(
                    pp.child("pathType"),
                    json!(other),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            errs.extend(validate_ingress_backend(
                p.field("backend").unwrap_or(&Value::Null),
                &pp.child("backend"),
            ));
        }
    }
    for (i, tls) in spec.arr_of("tls").iter().enumerate() {
        for (j, h) in tls.arr_of("hosts").iter().enumerate() {
            let h = h.as_str().unwrap_or("");
            let check = h.strip_prefix("*.").unwrap_or(h);
            let hp = path.child("tls").index(i).child("hosts").index(j);
            errs.extend(
                names::is_dns1123_subdomain(check)
                    .into_iter()
                    .map(|m| FieldError::invalid(&hp, json!(h), m)),
            );
        }
    }
    errs
}

fn validate_ingress_backend(b: &Value, path: &Path) -> Vec<FieldError> {
    match (b.field("service"), b.field("resource")) {
        (Some(_), Some(_)) => vec![FieldError::invalid(
            path,
            b.clone(),
            "cannot set both resource and service backends",
        )],
        (None, None) => vec![FieldError::invalid(
            path,
            b.clone(),
            "resource or service backend is required",
        )],
        (None, Some(r)) => ["kind", "name"]
            .into_iter()
            .filter(|f| r.str_of(f).is_empty())
            .map(|f| FieldError::required(path.children(&["resource", f]), ""))
            .collect(),
        (Some(s), None) => {
            let sp = path.child("service");
            let mut errs = Vec::new();
            let name = s.str_of("name");
            if name.is_empty() {
                errs.push(FieldError::required(sp.child("name"), ""));
            } else {
                errs.extend(
                    names::is_dns1035_label(name)
                        .into_iter()
                        .map(|m| FieldError::invalid(sp.child("name"), json!(name), m)),
                );
            }
            let port = s.field("port").unwrap_or(&Value::Null);
            let pp = sp.child("port");
            match (
                port.opt_str("name").filter(|n| !n.is_empty()),
                port.int_of("number").filter(|n| *n != 0),
            ) {
                (Some(_), Some(_)) => errs.push(FieldError::invalid(
                    &pp,
                    port.clone(),
                    "cannot set both port name & port number",
                )),
                (Some(n), None) => {
                    errs.extend(port_num_or_name(Some(&json!(n)), &pp.child("name")))
                }
                (None, Some(n)) => {
                    errs.extend(port_num_or_name(Some(&json!(n)), &pp.child("number")))
                }
                (None, None) => {
                    errs.push(FieldError::required(&pp, "port name or number is required"))
                }
            }
            errs
        }
    }
}

pub fn validate_storage_class(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let provisioner = obj.str_of("provisioner");
    if provisioner.is_empty() {
        errs.push(FieldError::required("provisioner", ""));
    } else {
        errs.extend(
            names::is_qualified_name(&provisioner.to_lowercase())
                .into_iter()
                .map(|m| FieldError::invalid("provisioner", json!(provisioner), m)),
        );
    }
    if let Some(p) = obj.opt_str("reclaimPolicy")
        && p != "Delete"
        && p != "Retain"
    {
        errs.push(FieldError::not_supported(
            "reclaimPolicy",
            json!(p),
            &["Delete", "Retain"],
        ));
    }
    if let Some(m) = obj.opt_str("volumeBindingMode")
        && m != "Immediate"
        && m != "WaitForFirstConsumer"
    {
        errs.push(FieldError::not_supported(
            "volumeBindingMode",
            json!(m),
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
    errs
}

pub fn validate_storage_class_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, msg) in [
        ("parameters", "updates to parameters are forbidden."),
        ("provisioner", "updates to provisioner are forbidden."),
        ("reclaimPolicy", "updates to reclaimPolicy are forbidden."),
    ] {
        if obj.field(field) != old.field(field) {
            errs.push(FieldError::forbidden(field, msg));
        }
    }
    errs.extend(immutable(
        obj.field("volumeBindingMode"),
        old.field("volumeBindingMode"),
        &Path::new("volumeBindingMode"),
    ));
    errs
}

pub fn validate_webhooks(obj: &Value, mutating: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, hook) in obj.arr_of("webhooks").iter().enumerate() {
        let p = Path::new("webhooks").index(i);
        let name = hook.str_of("name");
        errs.extend(
            names::is_dns1123_subdomain(name)
                .into_iter()
                .map(|m| FieldError::invalid(p.child("name"), json!(name), m)),
        );
        if name.split('.').count() < 3 {
            errs.push(FieldError::invalid(
                p.child("name"),
                json!(name),
                "should be a domain with at least three segments separated by dots",
            ));
        }
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(p.child("name"), json!(name)));
        }
        match hook.opt_str("sideEffects") {
            None => errs.push(FieldError::required(
                p.child("sideEffects"),
                "must specify one of None, NoneOnDryRun",
            )),
            Some(s) if s != "None" && s != "NoneOnDryRun" => errs.push(FieldError::not_supported(
                p.child("sideEffects"),
                json!(s),
                &["None", "NoneOnDryRun"],
            )),
            _ => {}
        }
        let versions = hook.arr_of("admissionReviewVersions");
        if versions.is_empty() {
            errs.push(FieldError::required(
                p.child("admissionReviewVersions"),
                "must specify one of v1, v1beta1",
            ));
        } else if !versions
            .iter()
            .any(|v| matches!(v.as_str(), Some("v1" | "v1beta1")))
        {
            errs.push(FieldError::invalid(
                p.child("admissionReviewVersions"),
                Value::Array(versions.to_vec()),
                "must include at least one of v1, v1beta1",
            ));
        }
        let cc = hook.field("clientConfig").unwrap_or(&Value::Null);
        if cc.has("url") == cc.has("service") {
            errs.push(FieldError::required(
                p.child("clientConfig"),
                "exactly one of url or service is required",
            ));
        }
        if let Some(fp) = hook.opt_str("failurePolicy")
            && fp != "Ignore"
            && fp != "Fail"
        {
            errs.push(FieldError::not_supported(
                p.child("failurePolicy"),
                json!(fp),
                &["Fail", "Ignore"],
            ));
        }
        if let Some(mp) = hook.opt_str("matchPolicy")
            && mp != "Exact"
            && mp != "Equivalent"
        {
            errs.push(FieldError::not_supported(
                p.child("matchPolicy"),
                json!(mp),
                &["Equivalent", "Exact"],
            ));
        }
        if let Some(t) = hook
            .int_of("timeoutSeconds")
            .filter(|t| !(1..=30).contains(t))
        {
            errs.push(FieldError::invalid(
                p.child("timeoutSeconds"),
                json!(t),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        if mutating
            && let Some(rp) = hook.opt_str("reinvocationPolicy")
            && rp != "Never"
            && rp != "IfNeeded"
        {
            errs.push(FieldError::not_supported(
                p.child("reinvocationPolicy"),
                json!(rp),
                &["Never", "IfNeeded"],
            ));
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            errs.extend(validate_label_selector(hook.field(sel), &p.child(sel)));
        }
    }
    errs
}

/// A CRD is named `<plural>.<group>`, which is how requests find it.
pub fn validate_crd_name(obj: &Value) -> Vec<FieldError> {
    let name = at(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = at(obj, &["spec", "names", "plural"])
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = at(obj, &["spec", "group"])
        .and_then(Value::as_str)
        .unwrap_or("");
    if name == format!("{plural}.{group}") {
        return vec![];
    }
    vec![FieldError::invalid(
        "metadata.name",
        json!(name),
        "must be spec.names.plural+\".\"+spec.group",
    )]
}
