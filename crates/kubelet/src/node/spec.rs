//! From a pod's container to what the runtime starts: the command line (`command`/`args`
//! against the image's entrypoint and cmd, with `$(VAR)` expansion), the environment (image,
//! service links, `envFrom`, `env` with every `valueFrom` source), cgroup resources and the
//! security settings — upstream's `generateContainerConfig`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use serde_json::Value;

use super::cri::{Image, Resources, Security};

/// Config maps and secrets of the pod's namespace, as the worker fetched them
/// (`None` = not found).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    pub services: Vec<Service>,
    /// The node's allocatable CPU (millicores) and memory (bytes), for `resourceFieldRef` of
    /// unset limits.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

/// A container that cannot be configured: upstream's `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// Names of config maps and secrets the container's environment needs (to fetch them first).
pub fn env_sources(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in c.env_from.iter().flatten() {
        if let Some(r) = &e.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &e.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(v) = &e.value_from {
            if let Some(r) = &v.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &v.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Replaces `$(VAR)` with the variable's value when it is defined; `$$` escapes a `$`.
/// Undefined references stay as they are, as upstream's expansion does.
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
                && let Some(v) = vars(&s[i + 2..i + 2 + end])
            {
                out.push_str(&v);
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Docker-link-style variables for every service with a cluster IP, as upstream's
/// `getServiceEnvVarMap` makes them (`WEB_SERVICE_HOST`, `WEB_PORT_80_TCP`...).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for svc in sorted {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref() else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let Some(ports) = spec.ports.as_ref().filter(|p| !p.is_empty()) else {
            continue;
        };
        let name = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        let first = &ports[0];
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// The value of a `fieldRef` path on the pod.
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    let map_text = |m: Option<&BTreeMap<String, String>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}=\"{}\"",
                        v.replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(meta.labels.as_ref()),
        "metadata.annotations" => map_text(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.hostIPs" => status
            .and_then(|s| s.host_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        other => return Err(ConfigError(format!("unsupported fieldRef path {other:?}"))),
    })
}

/// A container's `limits.cpu` etc. divided by `divisor`, rounded up like upstream.
pub fn resource_ref(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    sources: &Sources,
) -> Result<String, ConfigError> {
    let res = c.resources.as_ref();
    let get = |kind: &str, name: &str| -> Option<String> {
        let m = if kind == "limits" {
            res.and_then(|r| r.limits.as_ref())
        } else {
            res.and_then(|r| r.requests.as_ref())
        };
        m.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {resource:?}")))?;
    let millis = |q: &str| {
        crate::quantity::to_millis(q)
            .map_err(|e| ConfigError(format!("resourceFieldRef {resource}: {e}")))
    };
    let value_milli: i64 = match get(kind, name) {
        Some(q) => millis(&q)?,
        None if kind == "limits" && name == "cpu" => sources.node_cpu_millis,
        None if kind == "limits" && name == "memory" => sources.node_memory_bytes * 1000,
        None => 0,
    };
    let divisor_milli = match divisor.filter(|d| !d.is_empty() && *d != "0") {
        Some(d) => millis(d)?,
        None if name == "cpu" => 1000,
        None => 1000,
    };
    if divisor_milli <= 0 {
        return Err(ConfigError(format!("invalid divisor for {resource}")));
    }
    // Round up: a CPU request of 250m with divisor 1 reports 1, as upstream does.
    Ok(((value_milli + divisor_milli - 1) / divisor_milli).to_string())
}

/// The final environment, in order: image, service links, envFrom, env.
pub fn environment(
    pod: &Pod,
    c: &Container,
    image: &Image,
    sources: &Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = vars.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut vars, k.to_string(), v.to_string());
    }
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    for (k, v) in service_env(&sources.services) {
        let is_master = k.starts_with("KUBERNETES_");
        if links || is_master {
            set(&mut vars, k, v);
        }
    }
    for e in c.env_from.iter().flatten() {
        let prefix = e.prefix.clone().unwrap_or_default();
        if let Some(r) = &e.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        let name = format!("{prefix}{k}");
                        if env_name_ok(&name) {
                            set(&mut vars, name, v);
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &e.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        let name = format!("{prefix}{k}");
                        if env_name_ok(&name) {
                            set(&mut vars, name, String::from_utf8_lossy(&v).into_owned());
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                match sources.config_maps.get(&r.name).cloned().flatten() {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => {
                        return Err(ConfigError(format!("configmap \"{}\" not found", r.name)));
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources.secrets.get(&r.name).cloned().flatten() {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(f) = &from.field_ref {
                Some(field_ref(pod, &f.field_path)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_ref(
                    c,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    sources,
                )?)
            } else {
                None
            }
        } else {
            let raw = e.value.clone().unwrap_or_default();
            let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            Some(expand(&raw, &lookup))
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(vars)
}

/// The process to run: upstream's rules for `command`/`args` over the image's
/// `Entrypoint`/`Cmd`, each element `$(VAR)`-expanded against the container's environment.
pub fn command_line(c: &Container, image: &Image, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let expand_all = |v: &[String]| v.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let command = c.command.as_deref().unwrap_or_default();
    let args = c.args.as_deref().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => [expand_all(command), expand_all(args)].concat(),
        (true, false) => [image.entrypoint.clone(), expand_all(args)].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// cgroup settings from requests and limits, as upstream's CPU shares/quota conversion.
pub fn resources(c: &Container) -> Result<Resources, ConfigError> {
    let res = c.resources.as_ref();
    let q =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str|
         -> Result<Option<i64>, ConfigError> {
            match m.and_then(|m| m.get(k)) {
                None => Ok(None),
                Some(v) => crate::quantity::to_millis(&v.0)
                    .map(Some)
                    .map_err(|e| ConfigError(format!("invalid {k} quantity {:?}: {e}", v.0))),
            }
        };
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let cpu_request = q(requests, "cpu")?;
    let cpu_limit = q(limits, "cpu")?;
    let mem_limit = q(limits, "memory")?;
    let period: u64 = 100_000;
    // Upstream: shares = request * 1024 / 1000, at least 2; without a request, 2 (BestEffort)
    // or the limit (API defaulting copies limits into requests).
    let shares = cpu_request
        .or(cpu_limit)
        .map(|m| ((m * 1024) / 1000).max(2) as u64)
        .unwrap_or(2);
    let quota = cpu_limit.map(|m| ((m * period as i64) / 1000).max(1000));
    let memory_limit = match mem_limit {
        Some(m) => {
            let bytes = m / 1000;
            // The kernel cannot enforce less than a few pages; refuse absurd values clearly.
            if bytes < 4096 {
                return Err(ConfigError(format!(
                    "memory limit {bytes} bytes is too small to run a container"
                )));
            }
            Some(bytes)
        }
        None => None,
    };
    Ok(Resources {
        cpu_shares: Some(shares),
        cpu_quota: quota,
        cpu_period: quota.map(|_| period),
        memory_limit,
    })
}

/// Security settings from the container's and the pod's `securityContext`.
pub fn security(pod: &Pod, c: &Container, image: &Image) -> Result<Security, ConfigError> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let to_u32 = |v: i64, what: &str| {
        u32::try_from(v).map_err(|_| ConfigError(format!("{what} {v} is out of range")))
    };
    let run_as_user = run_as_user.map(|u| to_u32(u, "runAsUser")).transpose()?;
    let run_as_group = run_as_group.map(|g| to_u32(g, "runAsGroup")).transpose()?;
    if non_root {
        let image_user = image.user.split(':').next().unwrap_or_default();
        let uid = match run_as_user {
            Some(u) => Some(u),
            None if image_user.is_empty() => Some(0),
            None => image_user.parse::<u32>().ok(),
        };
        match uid {
            Some(0) => {
                return Err(ConfigError(
                    "container has runAsNonRoot and image will run as root".into(),
                ));
            }
            None => {
                return Err(ConfigError(format!(
                    "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root"
                )));
            }
            Some(_) => {}
        }
    }
    let privileged = csc.and_then(|s| s.privileged).unwrap_or(false);
    let caps = csc.and_then(|s| s.capabilities.as_ref());
    let supplemental_groups = psc
        .and_then(|s| s.supplemental_groups.as_ref())
        .map(|g| {
            g.iter()
                .map(|v| to_u32(*v, "supplementalGroups"))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let seccomp =
        |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>| p.map(|p| p.type_.clone());
    let seccomp_type = seccomp(csc.and_then(|s| s.seccomp_profile.as_ref()))
        .or_else(|| seccomp(psc.and_then(|s| s.seccomp_profile.as_ref())));
    Ok(Security {
        privileged,
        run_as_user,
        run_as_group,
        supplemental_groups,
        readonly_rootfs: csc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        add_caps: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_caps: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        no_new_privs: !privileged && csc.and_then(|s| s.allow_privilege_escalation) != Some(true),
        seccomp_unconfined: privileged || seccomp_type.as_deref() == Some("Unconfined"),
    })
}

/// A pod's JSON, for the few paths typed access makes awkward.
pub fn pod_json(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expansion_table() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "B" => Some("two".to_string()),
            _ => None,
        };
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(B)", "x1ytwo"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$(A", "$(A"),
            ("é$(A)", "é1"),
            ("$", "$"),
        ] {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
    }

    #[test]
    fn command_rules() {
        let image = Image {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let env = vec![("X".to_string(), "42".to_string())];
        let c = container(json!({"name": "c"}));
        assert_eq!(command_line(&c, &image, &env), ["/ep", "default"]);
        let c = container(json!({"name": "c", "args": ["$(X)"]}));
        assert_eq!(command_line(&c, &image, &env), ["/ep", "42"]);
        let c = container(json!({"name": "c", "command": ["sh"], "args": ["-c", "echo $(X)"]}));
        assert_eq!(command_line(&c, &image, &env), ["sh", "-c", "echo 42"]);
    }

    #[test]
    fn environment_sources_in_order() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"podIP": "10.42.0.9"},
        }))
        .unwrap();
        let c = container(json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-b"},
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            ],
            "resources": {"limits": {"memory": "64Mi"}},
        }));
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        );
        sources.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("pw".to_string(), b"hunter2".to_vec())])),
        );
        let image = Image {
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        };
        let env = environment(&pod, &c, &image, &sources).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/bin"));
        assert_eq!(get("A"), Some("a"));
        assert_eq!(get("B"), Some("a-b"));
        assert_eq!(get("CM_k"), Some("v"));
        assert_eq!(get("K"), Some("v"));
        assert_eq!(get("S"), Some("hunter2"));
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("IP"), Some("10.42.0.9"));
        assert_eq!(get("MEM"), Some("64"));

        let missing = container(json!({
            "name": "c",
            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
        }));
        let err = environment(&pod, &missing, &image, &Sources::default()).unwrap_err();
        assert_eq!(err.0, "configmap \"nope\" not found");
    }

    #[test]
    fn service_links() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web-api"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))
        .unwrap();
        let env = service_env(&[svc]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WEB_API_SERVICE_HOST"), Some("10.43.0.20"));
        assert_eq!(get("WEB_API_SERVICE_PORT"), Some("80"));
        assert_eq!(get("WEB_API_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("WEB_API_PORT"), Some("tcp://10.43.0.20:80"));
        assert_eq!(get("WEB_API_PORT_80_TCP_ADDR"), Some("10.43.0.20"));
    }

    #[test]
    fn cgroup_resources() {
        let c = container(json!({"name": "c", "resources": {
            "requests": {"cpu": "250m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"}}}));
        let r = resources(&c).unwrap();
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.memory_limit, Some(64 << 20));
        let tiny = container(json!({"name": "c", "resources": {"limits": {"memory": "1"}}}));
        assert!(resources(&tiny).is_err());
    }

    #[test]
    fn run_as_non_root() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "securityContext": {"runAsNonRoot": true}}}))
        .unwrap();
        let c = container(json!({"name": "c"}));
        assert!(security(&pod, &c, &Image::default()).is_err());
        let c = container(json!({"name": "c", "securityContext": {"runAsUser": 1000}}));
        let s = security(&pod, &c, &Image::default()).unwrap();
        assert_eq!(s.run_as_user, Some(1000));
        assert!(s.no_new_privs);
    }
}
