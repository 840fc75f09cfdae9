//! Row printers for networking, cluster, configuration, storage, RBAC, events and the
//! remaining built-in kinds, plus upstream's default (NAME, CREATED AT) row.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::duration::{age, human_duration, since, timestamp};
use super::format::{
    at, boolean, count, format_labels, format_selector, int, int0, is_set, list, list_with_more,
    name, nonempty, object, or_none, s, text,
};

/// `rest.NewDefaultTableConvertor`: name and the RFC 3339 creation time.
pub(super) fn default_row(obj: &Value, _now: Timestamp) -> Vec<Value> {
    let created = timestamp(at(obj, &["metadata", "creationTimestamp"]));
    // A zero Go time still formats, as year one.
    let created = created.map_or_else(
        || "0001-01-01T00:00:00Z".to_owned(),
        |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    vec![s(name(obj)), s(created)]
}

/// Sorted, de-duplicated IPs (or hostnames) of a load balancer status, comma-joined.
fn load_balancer(obj: &Value) -> String {
    let addrs: BTreeSet<&str> = list(obj, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| nonempty(i, &["ip"]).or_else(|| nonempty(i, &["hostname"])))
        .collect();
    addrs.into_iter().collect::<Vec<_>>().join(",")
}

pub(super) fn service(obj: &Value, now: Timestamp) -> Vec<Value> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = nonempty(spec, &["type"]).unwrap_or("ClusterIP");
    let external_ips: Vec<&str> = list(spec, &["externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" if !external_ips.is_empty() => external_ips.join(","),
        "ClusterIP" | "NodePort" => "<none>".to_owned(),
        "LoadBalancer" => {
            let lb = load_balancer(obj);
            match (lb.is_empty(), external_ips.is_empty()) {
                (true, true) => "<pending>".to_owned(),
                (false, true) => lb,
                (true, false) => external_ips.join(","),
                (false, false) => format!("{lb},{}", external_ips.join(",")),
            }
        }
        "ExternalName" => text(spec, &["externalName"]).to_owned(),
        _ => "<unknown>".to_owned(),
    };
    let ports: Vec<String> = list(spec, &["ports"])
        .iter()
        .map(|p| {
            let port = int0(p, &["port"]);
            let proto = nonempty(p, &["protocol"]).unwrap_or("TCP");
            match int0(p, &["nodePort"]) {
                np if np > 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    // clusterIPs[0] is what upstream prints; clusterIP mirrors it on any consistent object.
    let cluster_ip = list(spec, &["clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| nonempty(spec, &["clusterIP"]))
        .unwrap_or("<none>");
    vec![
        s(name(obj)),
        s(ty),
        s(cluster_ip),
        s(external),
        or_none(&ports.join(",")),
        age(obj, now),
        s(format_labels(object(spec, &["selector"]))),
    ]
}

/// `net.JoinHostPort`: brackets around IPv6 literals.
fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `formatEndpoints` with all ports.
fn format_endpoints(obj: &Value) -> String {
    let subsets = list(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_owned();
    }
    const MAX: usize = 3;
    let mut shown = Vec::new();
    let mut total = 0;
    for ss in subsets {
        let addrs = list(ss, &["addresses"]);
        let ports = list(ss, &["ports"]);
        let mut add = |item: String| {
            if shown.len() < MAX {
                shown.push(item);
            }
        };
        if ports.is_empty() {
            // Headless services may have no ports.
            total += addrs.len();
            addrs.iter().for_each(|a| add(text(a, &["ip"]).to_owned()));
        }
        for p in ports {
            total += addrs.len();
            let port = int0(p, &["port"]);
            addrs
                .iter()
                .for_each(|a| add(host_port(text(a, &["ip"]), port)));
        }
    }
    let joined = shown.join(",");
    if total > MAX {
        format!("{joined} + {} more...", total - MAX)
    } else {
        joined
    }
}

pub(super) fn endpoints(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![s(name(obj)), s(format_endpoints(obj)), age(obj, now)]
}

pub(super) fn endpoint_slice(obj: &Value, now: Timestamp) -> Vec<Value> {
    let ports = list(obj, &["ports"])
        .iter()
        .map(|p| match int(p, &["port"]) {
            Some(port) => port.to_string(),
            None => at(p, &["name"])
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_owned(),
        });
    let addresses = list(obj, &["endpoints"])
        .iter()
        .flat_map(|e| list(e, &["addresses"]))
        .map(|a| a.as_str().unwrap_or("").to_owned());
    vec![
        s(name(obj)),
        s(text(obj, &["addressType"])),
        s(list_with_more(ports)),
        s(list_with_more(addresses)),
        age(obj, now),
    ]
}

fn node_address(obj: &Value, ty: &str) -> Value {
    let addr = list(obj, &["status", "addresses"])
        .iter()
        .find(|a| text(a, &["type"]) == ty)
        .map_or("<none>", |a| text(a, &["address"]));
    s(addr)
}

pub(super) fn node(obj: &Value, now: Timestamp) -> Vec<Value> {
    // Later duplicates win, as in upstream's condition map.
    let ready = list(obj, &["status", "conditions"])
        .iter()
        .rfind(|c| text(c, &["type"]) == "Ready");
    let mut status = match ready {
        Some(c) if text(c, &["status"]) == "True" => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if boolean(obj, &["spec", "unschedulable"]) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    for (k, v) in object(obj, &["metadata", "labels"]).into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role);
            }
        } else if k == "kubernetes.io/role" {
            roles.extend(v.as_str().filter(|v| !v.is_empty()));
        }
    }
    let info = |f: &str| s(nonempty(obj, &["status", "nodeInfo", f]).unwrap_or("<unknown>"));
    vec![
        s(name(obj)),
        s(status),
        or_none(&roles.into_iter().collect::<Vec<_>>().join(",")),
        age(obj, now),
        s(text(obj, &["status", "nodeInfo", "kubeletVersion"])),
        node_address(obj, "InternalIP"),
        node_address(obj, "ExternalIP"),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ]
}

pub(super) fn namespace(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        s(text(obj, &["status", "phase"])),
        age(obj, now),
    ]
}

pub(super) fn config_map(obj: &Value, now: Timestamp) -> Vec<Value> {
    let n = count(obj, &["data"]) + count(obj, &["binaryData"]);
    vec![s(name(obj)), json!(n), age(obj, now)]
}

pub(super) fn secret(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        s(text(obj, &["type"])),
        json!(count(obj, &["data"])),
        age(obj, now),
    ]
}

pub(super) fn service_account(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![s(name(obj)), json!(count(obj, &["secrets"])), age(obj, now)]
}

/// Field names of core/v1 Event and, for `events.k8s.io`, of the newer Event shape that
/// upstream converts to the same internal type before printing.
pub(super) struct EventFields {
    regarding: &'static str,
    message: &'static str,
    source: &'static str,
    first: &'static str,
    last: &'static str,
    count: &'static str,
    reporting_controller: &'static str,
}

pub(super) const CORE_EVENT: EventFields = EventFields {
    regarding: "involvedObject",
    message: "message",
    source: "source",
    first: "firstTimestamp",
    last: "lastTimestamp",
    count: "count",
    reporting_controller: "reportingComponent",
};

pub(super) const EVENTS_V1_EVENT: EventFields = EventFields {
    regarding: "regarding",
    message: "note",
    source: "deprecatedSource",
    first: "deprecatedFirstTimestamp",
    last: "deprecatedLastTimestamp",
    count: "deprecatedCount",
    reporting_controller: "reportingController",
};

pub(super) fn core_event(obj: &Value, now: Timestamp) -> Vec<Value> {
    event(obj, now, &CORE_EVENT)
}

pub(super) fn events_v1_event(obj: &Value, now: Timestamp) -> Vec<Value> {
    event(obj, now, &EVENTS_V1_EVENT)
}

fn event(obj: &Value, now: Timestamp, f: &EventFields) -> Vec<Value> {
    let first = match timestamp(obj.get(f.first)) {
        Some(t) => since(Some(t), now),
        None => since(timestamp(obj.get("eventTime")), now),
    };
    let mut last = match timestamp(obj.get(f.last)) {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut n = int0(obj, &[f.count]);
    if let Some(series) = obj.get("series").filter(|v| v.is_object()) {
        last = since(timestamp(series.get("lastObservedTime")), now);
        n = int0(series, &["count"]);
    } else if n == 0 {
        // Singleton events of the new API carry no count.
        n = 1;
    }
    let kind = text(obj, &[f.regarding, "kind"]).to_lowercase();
    let target = match nonempty(obj, &[f.regarding, "name"]) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let component =
        nonempty(obj, &[f.source, "component"]).unwrap_or(text(obj, &[f.reporting_controller]));
    let host = nonempty(obj, &[f.source, "host"]).unwrap_or(text(obj, &["reportingInstance"]));
    let source = if host.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {host}")
    };
    vec![
        s(last),
        s(text(obj, &["type"])),
        s(text(obj, &["reason"])),
        s(target),
        s(text(obj, &[f.regarding, "fieldPath"])),
        s(source),
        s(text(obj, &[f.message]).trim()),
        s(first),
        json!(n),
        s(name(obj)),
    ]
}

/// `helper.GetAccessModesAsString`: fixed order, de-duplicated.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    let table = [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ];
    let out: Vec<&str> = table
        .iter()
        .filter(|(m, _)| has(m))
        .map(|(_, a)| *a)
        .collect();
    out.join(",")
}

const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

fn storage_class_of(obj: &Value) -> &str {
    match at(obj, &["metadata", "annotations", BETA_STORAGE_CLASS]).and_then(Value::as_str) {
        Some(class) => class,
        None => text(obj, &["spec", "storageClassName"]),
    }
}

fn quantity_or_zero(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_owned(),
    }
}

pub(super) fn persistent_volume(obj: &Value, now: Timestamp) -> Vec<Value> {
    let claim = match at(obj, &["spec", "claimRef"]).filter(|v| v.is_object()) {
        Some(c) => format!("{}/{}", text(c, &["namespace"]), text(c, &["name"])),
        None => String::new(),
    };
    let phase = if is_set(obj, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else {
        text(obj, &["status", "phase"])
    };
    vec![
        s(name(obj)),
        s(quantity_or_zero(at(obj, &["spec", "capacity", "storage"]))),
        s(access_modes(list(obj, &["spec", "accessModes"]))),
        s(text(obj, &["spec", "persistentVolumeReclaimPolicy"])),
        s(phase),
        s(claim),
        s(storage_class_of(obj)),
        s(nonempty(obj, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        s(text(obj, &["status", "reason"])),
        age(obj, now),
        s(nonempty(obj, &["spec", "volumeMode"]).unwrap_or("<unset>")),
    ]
}

pub(super) fn persistent_volume_claim(obj: &Value, now: Timestamp) -> Vec<Value> {
    let phase = if is_set(obj, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else {
        text(obj, &["status", "phase"])
    };
    let volume = text(obj, &["spec", "volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity_or_zero(at(obj, &["status", "capacity", "storage"])),
            access_modes(list(obj, &["status", "accessModes"])),
        )
    };
    vec![
        s(name(obj)),
        s(phase),
        s(volume),
        s(capacity),
        s(modes),
        s(storage_class_of(obj)),
        s(nonempty(obj, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        age(obj, now),
        s(nonempty(obj, &["spec", "volumeMode"]).unwrap_or("<unset>")),
    ]
}

pub(super) fn storage_class(obj: &Value, now: Timestamp) -> Vec<Value> {
    let annotations = object(obj, &["metadata", "annotations"]);
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"));
    let mut shown = name(obj).to_owned();
    if is_default {
        shown.push_str(" (default)");
    }
    vec![
        s(shown),
        s(text(obj, &["provisioner"])),
        s(nonempty(obj, &["reclaimPolicy"]).unwrap_or("Delete")),
        s(nonempty(obj, &["volumeBindingMode"]).unwrap_or("Immediate")),
        json!(boolean(obj, &["allowVolumeExpansion"]).unwrap_or(false)),
        age(obj, now),
    ]
}

/// Both RoleBinding and ClusterRoleBinding (`rbac.SubjectsStrings`).
pub(super) fn role_binding(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for subject in list(obj, &["subjects"]) {
        let n = text(subject, &["name"]);
        match text(subject, &["kind"]) {
            "ServiceAccount" => sas.push(format!("{}/{n}", text(subject, &["namespace"]))),
            "User" => users.push(n.to_owned()),
            "Group" => groups.push(n.to_owned()),
            _ => {}
        }
    }
    let role = format!(
        "{}/{}",
        text(obj, &["roleRef", "kind"]),
        text(obj, &["roleRef", "name"])
    );
    vec![
        s(name(obj)),
        s(role),
        age(obj, now),
        s(users.join(", ")),
        s(groups.join(", ")),
        s(sas.join(", ")),
    ]
}

pub(super) fn lease(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "holderIdentity"])),
        age(obj, now),
    ]
}

pub(super) fn priority_class(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        json!(int0(obj, &["value"])),
        json!(boolean(obj, &["globalDefault"]).unwrap_or(false)),
        age(obj, now),
        // v1 defaults preemptionPolicy when the object is decoded.
        s(nonempty(obj, &["preemptionPolicy"]).unwrap_or("PreemptLowerPriority")),
    ]
}

pub(super) fn ingress(obj: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let rules = list(obj, &["spec", "rules"]);
    let mut hosts = Vec::new();
    let mut more = false;
    for rule in rules {
        more |= hosts.len() == MAX;
        if let Some(h) = nonempty(rule, &["host"]).filter(|_| !more) {
            hosts.push(h);
        }
    }
    let hosts = match (hosts.is_empty(), more) {
        (true, _) => "*".to_owned(),
        (false, true) => format!("{} + {} more...", hosts.join(","), rules.len() - MAX),
        (false, false) => hosts.join(","),
    };
    let ports = if list(obj, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        s(name(obj)),
        s(nonempty(obj, &["spec", "ingressClassName"]).unwrap_or("<none>")),
        s(hosts),
        s(load_balancer(obj)),
        s(ports),
        age(obj, now),
    ]
}

pub(super) fn ingress_class(obj: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = match at(obj, &["spec", "parameters"]).filter(|v| v.is_object()) {
        Some(p) => {
            let group = at(p, &["apiGroup"])
                .and_then(Value::as_str)
                .map(|g| format!(".{g}"))
                .unwrap_or_default();
            format!("{}{group}/{}", text(p, &["kind"]), text(p, &["name"]))
        }
        None => "<none>".to_owned(),
    };
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "controller"])),
        s(parameters),
        age(obj, now),
    ]
}

pub(super) fn network_policy(obj: &Value, now: Timestamp) -> Vec<Value> {
    // podSelector is a struct, never nil: an absent one selects everything.
    let empty = json!({});
    let sel = at(obj, &["spec", "podSelector"])
        .filter(|v| !v.is_null())
        .unwrap_or(&empty);
    vec![s(name(obj)), s(format_selector(Some(sel))), age(obj, now)]
}

pub(super) fn resource_quota(obj: &Value, now: Timestamp) -> Vec<Value> {
    let mut resources: Vec<(&String, &Value)> = object(obj, &["status", "hard"])
        .into_iter()
        .flatten()
        .collect();
    resources.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let used = object(obj, &["status", "used"]);
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    for (res, hard) in resources {
        let item = format!(
            "{res}: {}/{}",
            quantity_or_zero(used.and_then(|u| u.get(res))),
            quantity_or_zero(Some(hard))
        );
        let is_limit = res
            .split_once('.')
            .is_some_and(|(prefix, _)| prefix == "limits");
        if is_limit {
            limits.push(item)
        } else {
            requests.push(item)
        }
    }
    vec![
        s(name(obj)),
        s(requests.join(", ")),
        s(limits.join(", ")),
        age(obj, now),
    ]
}

pub(super) fn csr(obj: &Value, now: Timestamp) -> Vec<Value> {
    let has = |ty: &str| {
        list(obj, &["status", "conditions"])
            .iter()
            .any(|c| text(c, &["type"]) == ty)
    };
    let mut status = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_owned();
    if has("Failed") {
        status.push_str(",Failed");
    }
    if !text(obj, &["status", "certificate"]).is_empty() {
        status.push_str(",Issued");
    }
    let requested = int(obj, &["spec", "expirationSeconds"]).map_or_else(
        || "<none>".to_owned(),
        |secs| human_duration(jiff::SignedDuration::from_secs(secs)),
    );
    vec![
        s(name(obj)),
        age(obj, now),
        s(nonempty(obj, &["spec", "signerName"]).unwrap_or("<none>")),
        s(text(obj, &["spec", "username"])),
        s(requested),
        s(status),
    ]
}

pub(super) fn runtime_class(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![s(name(obj)), s(text(obj, &["handler"])), age(obj, now)]
}

pub(super) fn webhook_configuration(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        json!(count(obj, &["webhooks"])),
        age(obj, now),
    ]
}

pub(super) fn volume_attachment(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "attacher"])),
        s(text(obj, &["spec", "source", "persistentVolumeName"])),
        s(text(obj, &["spec", "nodeName"])),
        json!(boolean(obj, &["status", "attached"]).unwrap_or(false)),
        age(obj, now),
    ]
}

pub(super) fn csi_node(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        json!(count(obj, &["spec", "drivers"])),
        age(obj, now),
    ]
}

pub(super) fn service_cidr(obj: &Value, now: Timestamp) -> Vec<Value> {
    let cidrs: Vec<&str> = list(obj, &["spec", "cidrs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vec![s(name(obj)), s(cidrs.join(",")), age(obj, now)]
}

pub(super) fn ip_address(obj: &Value, now: Timestamp) -> Vec<Value> {
    let parent = match at(obj, &["spec", "parentRef"]).filter(|v| v.is_object()) {
        Some(p) => {
            let resource = text(p, &["resource"]);
            let mut out = match nonempty(p, &["group"]) {
                Some(g) => format!("{resource}.{g}"),
                None => resource.to_owned(),
            }
            .to_lowercase();
            if let Some(ns) = nonempty(p, &["namespace"]) {
                out = format!("{out}/{ns}");
            }
            format!("{out}/{}", text(p, &["name"]))
        }
        None => "<none>".to_owned(),
    };
    // The printer emits AGE although the column list has none; kubectl ignores the extra cell.
    vec![s(name(obj)), s(parent), age(obj, now)]
}

pub(super) fn priority_level(obj: &Value, now: Timestamp) -> Vec<Value> {
    let limited = at(obj, &["spec", "limited"]).filter(|v| v.is_object());
    let queuing = limited
        .and_then(|l| at(l, &["limitResponse", "queuing"]))
        .filter(|v| v.is_object());
    let none = || s("<none>");
    let num = |v: Option<&Value>, f: &str| v.map_or_else(none, |v| json!(int0(v, &[f])));
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "type"])),
        num(limited, "nominalConcurrencyShares"),
        num(queuing, "queues"),
        num(queuing, "handSize"),
        num(queuing, "queueLengthLimit"),
        age(obj, now),
    ]
}

pub(super) fn flow_schema(obj: &Value, now: Timestamp) -> Vec<Value> {
    let dangling = list(obj, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == "Dangling")
        .map_or("?", |c| text(c, &["status"]));
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "priorityLevelConfiguration", "name"])),
        json!(int0(obj, &["spec", "matchingPrecedence"])),
        s(nonempty(obj, &["spec", "distinguisherMethod", "type"]).unwrap_or("<none>")),
        age(obj, now),
        s(dangling),
    ]
}
