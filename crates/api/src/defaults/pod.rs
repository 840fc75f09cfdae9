//! Pod and pod-template defaults: `SetDefaults_PodSpec`, `SetDefaults_Container`, probes,
//! handlers, volume sources, and the Pod-only `SetDefaults_Pod` (requests from limits,
//! `enableServiceLinks`, host-network ports).

use super::resources::{normalize_quantities, pvc_spec};
use super::{child, each, ensure, set, set_str, str_of};
use serde_json::{Map, Value, json};

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

pub fn pod(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    pod_spec(spec);
    for list in ["containers", "initContainers"] {
        for c in each(spec, list) {
            requests_from_limits(c);
        }
    }
    set(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for list in ["containers", "initContainers"] {
            for c in each(spec, list) {
                for port in each(c, "ports") {
                    let container_port = port.get("containerPort").cloned().unwrap_or(Value::Null);
                    if port.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        port.insert("hostPort".into(), container_port);
                    }
                }
            }
        }
    }
}

/// A `PodTemplateSpec`: only the spec-level defaults, not the Pod-only ones.
pub fn template(t: &mut Map<String, Value>) {
    if let Some(spec) = child(t, "spec") {
        pod_spec(spec);
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set_str(spec, "dnsPolicy", "ClusterFirst");
    set_str(spec, "restartPolicy", "Always");
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set_str(spec, "schedulerName", "default-scheduler");
    for list in CONTAINER_LISTS {
        for c in each(spec, list) {
            container(c);
        }
    }
    for v in each(spec, "volumes") {
        volume(v);
    }
    if let Some(overhead) = child(spec, "overhead") {
        normalize_quantities(overhead);
    }
}

fn container(c: &mut Map<String, Value>) {
    let policy = pull_policy(str_of(c, "image"));
    set_str(c, "imagePullPolicy", policy);
    set_str(c, "terminationMessagePath", "/dev/termination-log");
    set_str(c, "terminationMessagePolicy", "File");
    for port in each(c, "ports") {
        set_str(port, "protocol", "TCP");
    }
    for env in each(c, "env") {
        if let Some(field_ref) = child(env, "valueFrom").and_then(|vf| child(vf, "fieldRef")) {
            set_str(field_ref, "apiVersion", "v1");
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = child(c, probe) {
            probe_defaults(p);
        }
    }
    if let Some(lifecycle) = child(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = child(lifecycle, hook).and_then(|h| child(h, "httpGet")) {
                http_get(h);
            }
        }
    }
    // `resources` is a struct, not a pointer, upstream: it always serializes, if only as `{}`.
    let resources = ensure(c, "resources");
    for list in ["limits", "requests"] {
        if let Some(l) = child(resources, list) {
            normalize_quantities(l);
        }
    }
}

fn probe_defaults(p: &mut Map<String, Value>) {
    for (field, default) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        // Plain int32 fields upstream: zero means unset.
        if p.get(field).and_then(Value::as_i64).unwrap_or(0) == 0 {
            p.insert(field.into(), json!(default));
        }
    }
    if let Some(h) = child(p, "httpGet") {
        http_get(h);
    }
}

fn http_get(h: &mut Map<String, Value>) {
    set_str(h, "path", "/");
    set_str(h, "scheme", "HTTP");
}

/// Pod-only: a resource with a limit but no request is requested at its limit.
fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(resources) = child(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = ensure(resources, "requests");
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn volume(v: &mut Map<String, Value>) {
    if !VOLUME_SOURCES
        .iter()
        .any(|s| v.get(*s).is_some_and(|x| !x.is_null()))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(h) = child(v, "hostPath") {
        set(h, "type", json!(""));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = child(v, source) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(d) = child(v, "downwardAPI") {
        downward_api_items(d);
    }
    if let Some(p) = child(v, "projected") {
        for src in each(p, "sources") {
            if let Some(d) = child(src, "downwardAPI") {
                downward_api_items(d);
            }
            if let Some(t) = child(src, "serviceAccountToken") {
                set(t, "expirationSeconds", json!(3600));
            }
        }
    }
    if let Some(s) = child(v, "iscsi") {
        set_str(s, "iscsiInterface", "default");
    }
    if let Some(s) = child(v, "rbd") {
        set_str(s, "pool", "rbd");
        set_str(s, "user", "admin");
        set_str(s, "keyring", "/etc/ceph/keyring");
    }
    if let Some(s) = child(v, "azureDisk") {
        set(s, "cachingMode", json!("ReadWrite"));
        set(s, "kind", json!("Shared"));
        set(s, "fsType", json!("ext4"));
        set(s, "readOnly", json!(false));
    }
    if let Some(s) = child(v, "scaleIO") {
        set_str(s, "storageMode", "ThinProvisioned");
        set_str(s, "fsType", "xfs");
    }
    if let Some(spec) = child(v, "ephemeral")
        .and_then(|e| child(e, "volumeClaimTemplate"))
        .and_then(|t| child(t, "spec"))
    {
        pvc_spec(spec);
    }
}

fn downward_api_items(d: &mut Map<String, Value>) {
    for item in each(d, "items") {
        if let Some(f) = child(item, "fieldRef") {
            set_str(f, "apiVersion", "v1");
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`, like upstream, which also
/// falls back to `IfNotPresent` when the reference does not parse.
fn pull_policy(image: &str) -> &'static str {
    match parse_image_reference(image) {
        Some((Some("latest"), _)) | Some((None, false)) => "Always",
        _ => "IfNotPresent",
    }
}

/// The tag and whether a digest is present, for a valid Docker image reference.
fn parse_image_reference(image: &str) -> Option<(Option<&str>, bool)> {
    if image.len() == 64
        && image
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let (named, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let (alg, hex) = d.split_once(':')?;
        let alg_ok = alg.split(['-', '_', '+', '.']).all(|p| {
            p.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
                && p.bytes().all(|c| c.is_ascii_alphanumeric())
        });
        if !alg_ok || hex.len() < 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
    }
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    if let Some(t) = tag {
        let ok = t.len() <= 128
            && t.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return None;
        }
    }
    if name.is_empty() || name.len() > 255 {
        return None;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        if !valid_domain(first) {
            return None;
        }
        components.remove(0);
    }
    components
        .iter()
        .all(|c| valid_path_component(c))
        .then_some((tag, digest.is_some()))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.first().is_none_or(|x| !alnum(x)) || b.last().is_none_or(|x| !alnum(x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::pull_policy;

    #[test]
    fn pull_policies() {
        let cases = [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry.example.com:5000/team/app", "Always"),
            ("registry.example.com:5000/team/app:v2", "IfNotPresent"),
            ("localhost/app:dev", "IfNotPresent"),
            (
                "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "IfNotPresent",
            ),
            (
                "nginx:1.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "IfNotPresent",
            ),
            ("", "IfNotPresent"),
            ("Nginx", "IfNotPresent"),
            ("my__app/x-y.z", "Always"),
            ("bad--", "IfNotPresent"),
        ];
        for (image, want) in cases {
            assert_eq!(pull_policy(image), want, "{image:?}");
        }
    }
}
