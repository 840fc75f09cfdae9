//! Pure pieces of the simulated kubelet: what it knows about a pod, and the pod status it
//! reports, shaped like upstream's `generateAPIPodStatus` (conditions, container statuses, IPs).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::join::sha256_hex;

/// RFC 3339 at second precision, as `metav1.Time` serializes.
pub(crate) fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 at microsecond precision, as `metav1.MicroTime` serializes.
pub(crate) fn micro_time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A runtime-style container ID: `sim://` and 64 hex digits, unique per pod, container and
/// restart.
pub fn container_id(pod_uid: &str, container: &str, restart: i32) -> String {
    format!(
        "sim://{}",
        sha256_hex(format!("{pod_uid}/{container}/{restart}").as_bytes())
    )
}

/// Normalizes an image reference the way containerd reports it: `nginx` becomes
/// `docker.io/library/nginx:latest`.
pub fn normalize_image(image: &str) -> String {
    let image = image.trim();
    if image.is_empty() {
        return String::new();
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A first segment with a dot, a colon or `localhost` is a registry host.
    let mut name = match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    if digest.is_none() && !last.contains(':') {
        name.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{name}@{d}"),
        None => name,
    }
}

/// The `imageID` a runtime reports: the repository with a (here: made-up, stable) digest.
fn image_id(normalized: &str) -> String {
    if normalized.contains('@') {
        return normalized.to_string();
    }
    let repo = match normalized.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => normalized,
    };
    format!("{repo}@sha256:{}", sha256_hex(normalized.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// The parts of a container the status reports.
#[derive(Debug, Clone)]
pub(crate) struct ContainerLite {
    pub name: String,
    pub image: String,
    pub mounts: Vec<Value>,
    pub resources: Option<Value>,
    /// An init container with `restartPolicy: Always` (a sidecar): runs like an app container.
    pub sidecar: bool,
}

impl ContainerLite {
    fn from(c: &Container) -> ContainerLite {
        let mounts = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let mut v = json!({ "name": m.name, "mountPath": m.mount_path });
                if m.read_only == Some(true) {
                    v["readOnly"] = json!(true);
                    v["recursiveReadOnly"] = json!("Disabled");
                }
                v
            })
            .collect();
        let resources = c
            .resources
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| {
                let mut out = serde_json::Map::new();
                for k in ["requests", "limits"] {
                    if let Some(m) = v
                        .get(k)
                        .filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))
                    {
                        out.insert(k.into(), m.clone());
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            });
        ContainerLite {
            name: c.name.clone(),
            image: normalize_image(c.image.as_deref().unwrap_or_default()),
            mounts,
            resources,
            sidecar: c.restart_policy.as_deref() == Some("Always"),
        }
    }
}

/// The exit a pod's annotations ask for: every container exits with `code` after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SimExit {
    pub code: i32,
    pub after: Duration,
}

/// What the simulated kubelet keeps from a pod's spec.
#[derive(Debug, Clone)]
pub(crate) struct SpecLite {
    pub containers: Vec<ContainerLite>,
    pub init: Vec<ContainerLite>,
    pub restart_policy: RestartPolicy,
    pub qos: String,
    pub exit: Option<SimExit>,
}

impl SpecLite {
    pub fn from(pod: &Pod) -> SpecLite {
        let spec = pod.spec.as_ref();
        let containers = spec
            .map(|s| s.containers.iter().map(ContainerLite::from).collect())
            .unwrap_or_default();
        let init = spec
            .and_then(|s| s.init_containers.as_ref())
            .map(|cs| cs.iter().map(ContainerLite::from).collect())
            .unwrap_or_default();
        let restart_policy = match spec.and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        };
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| qos_class(pod).to_string());
        let ann = pod.metadata.annotations.as_ref();
        let exit = ann
            .and_then(|a| a.get(super::SIM_EXIT_CODE))
            .and_then(|c| c.trim().parse::<i32>().ok())
            .map(|code| SimExit {
                code,
                after: ann
                    .and_then(|a| a.get(super::SIM_DURATION))
                    .and_then(|d| super::parse_duration(d))
                    .unwrap_or(Duration::ZERO),
            });
        SpecLite {
            containers,
            init,
            restart_policy,
            qos,
            exit,
        }
    }
}

/// Upstream's QoS classes: BestEffort without any CPU/memory requests or limits, Guaranteed when
/// every container limits both and requests equal limits, Burstable otherwise.
pub(crate) fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let res = c.resources.as_ref();
        let amount = |m: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                      k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(|q| crate::quantity::to_millis(&q.0).ok())
                .filter(|v| *v != 0)
        };
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        for k in ["cpu", "memory"] {
            let (req, lim) = (amount(requests, k), amount(limits, k));
            any |= req.is_some() || lim.is_some();
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A finished container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Terminated {
    pub exit_code: i32,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub container_id: String,
}

impl Terminated {
    fn reason(&self) -> &'static str {
        if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Where the (simulated, all alike) app containers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Run {
    Running {
        started_at: Timestamp,
    },
    /// Waiting out CrashLoopBackOff after `last` exited.
    BackOff {
        backoff: Duration,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn terminal(self) -> bool {
        self != Phase::Running
    }
}

/// Everything the status is generated from.
#[derive(Debug, Clone)]
pub(crate) struct PodView {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub spec: SpecLite,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    pub start_time: Timestamp,
    pub phase: Phase,
    pub restart_count: i32,
    pub run: Run,
    pub last: Option<Terminated>,
    /// The PodScheduled condition as the pod has it (set by the scheduler's binding).
    pub scheduled: Option<Value>,
    /// Types of other conditions on the pod (e.g. DisruptionTarget), kept in place.
    pub other_conditions: Vec<String>,
    /// Last reported status and transition time of each condition the kubelet owns.
    pub transitions: HashMap<&'static str, (bool, Timestamp)>,
}

const OWNED: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

impl PodView {
    /// The strategic merge patch for `pods/status` that reports this pod as of `now`; records
    /// transition times so unchanged conditions keep theirs.
    pub fn status_patch(&mut self, now: Timestamp) -> Value {
        let terminal = self.phase.terminal();
        let ready = matches!(self.run, Run::Running { .. });
        let unready: Vec<&str> = if ready {
            Vec::new()
        } else {
            self.spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect()
        };
        let terminal_reason = match self.phase {
            Phase::Succeeded => Some("PodCompleted"),
            Phase::Failed => Some("PodFailed"),
            Phase::Running => None,
        };
        let mut conditions = Vec::new();
        for ty in OWNED {
            let (status, reason, message): (bool, Option<&str>, Option<String>) = match ty {
                "PodReadyToStartContainers" => (!terminal, None, None),
                "Initialized" => (
                    true,
                    (self.phase == Phase::Succeeded).then_some("PodCompleted"),
                    None,
                ),
                _ => match terminal_reason {
                    Some(r) => (false, Some(r), None),
                    None if ready => (true, None, None),
                    None => (
                        false,
                        Some("ContainersNotReady"),
                        Some(format!(
                            "containers with unready status: [{}]",
                            unready.join(" ")
                        )),
                    ),
                },
            };
            let ltt = match self.transitions.get(ty) {
                Some((s, t)) if *s == status => *t,
                _ => now,
            };
            self.transitions.insert(ty, (status, ltt));
            let mut c = json!({
                "type": ty,
                "status": if status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time(ltt),
            });
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            conditions.push(c);
        }
        conditions.push(self.scheduled.clone().unwrap_or_else(|| {
            json!({
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": null,
                "lastTransitionTime": time(self.start_time),
            })
        }));
        let mut order: Vec<Value> = OWNED
            .iter()
            .chain(std::iter::once(&"PodScheduled"))
            .map(|t| json!({ "type": t }))
            .collect();
        order.extend(self.other_conditions.iter().map(|t| json!({ "type": t })));

        let containers: Vec<Value> = self
            .spec
            .containers
            .iter()
            .map(|c| self.container_status(c))
            .collect();
        let init: Vec<Value> = self.spec.init.iter().map(|c| self.init_status(c)).collect();

        let mut status = json!({
            "$setElementOrder/conditions": order,
            "phase": self.phase.as_str(),
            "conditions": conditions,
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{ "ip": self.host_ip.to_string() }],
            "startTime": time(self.start_time),
            "containerStatuses": containers,
            "qosClass": self.spec.qos,
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        if let Some(ip) = self.pod_ip {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{ "ip": ip.to_string() }]);
        }
        json!({ "status": status })
    }

    fn base(&self, c: &ContainerLite) -> Value {
        let mut v = json!({
            "name": c.name,
            "image": c.image,
            "imageID": image_id(&c.image),
        });
        if !c.mounts.is_empty() {
            v["volumeMounts"] = json!(c.mounts);
        }
        if let Some(r) = &c.resources {
            v["resources"] = r.clone();
        }
        v
    }

    fn terminated_json(t: &Terminated) -> Value {
        json!({ "terminated": {
            "exitCode": t.exit_code,
            "reason": t.reason(),
            "startedAt": time(t.started_at),
            "finishedAt": time(t.finished_at),
            "containerID": t.container_id,
        }})
    }

    fn container_status(&self, c: &ContainerLite) -> Value {
        let mut v = self.base(c);
        let id = container_id(&self.uid, &c.name, self.restart_count);
        // In CrashLoopBackOff the last run is the one that just ended (not yet restarted, so
        // it is still run number `restart_count`); otherwise it is the one before this run.
        let last_run = match self.run {
            Run::BackOff { .. } => self.restart_count,
            _ => self.restart_count - 1,
        };
        let last = self.last.as_ref().map(|t| {
            let mut t = t.clone();
            t.container_id = container_id(&self.uid, &c.name, last_run);
            t
        });
        let (state, ready, started, id) = match &self.run {
            Run::Running { started_at } => (
                json!({ "running": { "startedAt": time(*started_at) } }),
                true,
                true,
                Some(id),
            ),
            Run::BackOff { backoff } => (
                json!({ "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off {} restarting failed container={} pod={}_{}({})",
                        go_duration(*backoff), c.name, self.name, self.namespace, self.uid
                    ),
                }}),
                false,
                false,
                last.as_ref().map(|t| t.container_id.clone()),
            ),
            Run::Terminated(t) => {
                let mut t = t.clone();
                t.container_id = id.clone();
                (Self::terminated_json(&t), false, false, Some(id))
            }
        };
        v["state"] = state;
        v["lastState"] = last.as_ref().map_or(json!({}), Self::terminated_json);
        v["ready"] = json!(ready);
        v["restartCount"] = json!(self.restart_count);
        v["started"] = json!(started);
        if let Some(id) = id {
            v["containerID"] = json!(id);
        }
        v
    }

    fn init_status(&self, c: &ContainerLite) -> Value {
        let mut v = self.base(c);
        let id = container_id(&self.uid, &c.name, 0);
        let running = c.sidecar && !self.phase.terminal();
        if running {
            v["state"] = json!({ "running": { "startedAt": time(self.start_time) } });
        } else {
            let finished = if c.sidecar {
                match &self.run {
                    Run::Terminated(t) => t.finished_at,
                    _ => self.start_time,
                }
            } else {
                self.start_time
            };
            v["state"] = Self::terminated_json(&Terminated {
                exit_code: 0,
                started_at: self.start_time,
                finished_at: finished,
                container_id: id.clone(),
            });
        }
        v["lastState"] = json!({});
        v["ready"] = json!(running);
        v["restartCount"] = json!(0);
        v["started"] = json!(running);
        v["containerID"] = json!(id);
        v
    }
}

/// Go's `time.Duration` string for whole seconds and minutes (`10s`, `2m40s`, `5m0s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_normalize_like_containerd() {
        for (i, want) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
        ] {
            assert_eq!(normalize_image(i), want, "{i}");
        }
        let id = image_id("docker.io/library/nginx:1.27");
        assert!(id.starts_with("docker.io/library/nginx@sha256:"), "{id}");
        assert_eq!(image_id("x.io/a@sha256:abc"), "x.io/a@sha256:abc");
    }

    #[test]
    fn container_ids_are_stable_and_distinct() {
        let a = container_id("u", "c", 0);
        assert_eq!(a, container_id("u", "c", 0));
        assert_ne!(a, container_id("u", "c", 1));
        assert!(a.starts_with("sim://") && a.len() == 6 + 64);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }

    fn pod(json: Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn qos_classes() {
        let c = |res: Value| {
            pod(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "resources": res}]}}),
            )
        };
        assert_eq!(qos_class(&c(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&c(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&c(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&c(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}})
            )),
            "Burstable"
        );
    }

    fn view() -> PodView {
        let p = pod(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "app", "image": "nginx", "volumeMounts": [{"name": "tok", "mountPath": "/var/run/secrets", "readOnly": true}]}],
            },
        }));
        PodView {
            uid: "u1".into(),
            name: "web".into(),
            namespace: "default".into(),
            spec: SpecLite::from(&p),
            host_ip: Ipv4Addr::new(198, 18, 0, 1),
            pod_ip: Some(Ipv4Addr::new(10, 128, 0, 2)),
            start_time: Timestamp::from_second(1_700_000_000).unwrap(),
            phase: Phase::Running,
            restart_count: 0,
            run: Run::Running {
                started_at: Timestamp::from_second(1_700_000_001).unwrap(),
            },
            last: None,
            scheduled: None,
            other_conditions: vec![],
            transitions: HashMap::new(),
        }
    }

    #[test]
    fn running_pod_status() {
        let mut v = view();
        let now = Timestamp::from_second(1_700_000_002).unwrap();
        let s = v.status_patch(now)["status"].clone();
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.128.0.2");
        assert_eq!(s["podIPs"][0]["ip"], "10.128.0.2");
        assert_eq!(s["hostIP"], "198.18.0.1");
        assert_eq!(s["qosClass"], "BestEffort");
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert!(
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] == "True")
        );
        let c = &s["containerStatuses"][0];
        assert_eq!(c["image"], "docker.io/library/nginx:latest");
        assert_eq!(c["ready"], true);
        assert_eq!(c["started"], true);
        assert_eq!(c["restartCount"], 0);
        assert_eq!(c["state"]["running"]["startedAt"], "2023-11-14T22:13:21Z");
        assert_eq!(c["volumeMounts"][0]["recursiveReadOnly"], "Disabled");
        assert!(c["containerID"].as_str().unwrap().starts_with("sim://"));
        let i = &s["initContainerStatuses"][0];
        assert_eq!(i["state"]["terminated"]["reason"], "Completed");
        assert_eq!(i["ready"], false);

        // A later report keeps the transition times of unchanged conditions.
        let later = Timestamp::from_second(1_700_000_100).unwrap();
        let again = v.status_patch(later)["status"].clone();
        assert_eq!(
            again["conditions"][2]["lastTransitionTime"],
            s["conditions"][2]["lastTransitionTime"]
        );
    }

    #[test]
    fn crash_loop_and_terminal_statuses() {
        let mut v = view();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_010).unwrap();
        v.status_patch(t0);
        v.restart_count = 1;
        v.last = Some(Terminated {
            exit_code: 3,
            started_at: t0,
            finished_at: t1,
            container_id: String::new(),
        });
        v.run = Run::BackOff {
            backoff: Duration::from_secs(10),
        };
        let s = v.status_patch(t1)["status"].clone();
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(
            c["state"]["waiting"]["message"],
            "back-off 10s restarting failed container=app pod=web_default(u1)"
        );
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(c["ready"], false);
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(s["conditions"][2]["reason"], "ContainersNotReady");
        assert_eq!(
            s["conditions"][2]["message"],
            "containers with unready status: [app]"
        );
        assert_eq!(s["conditions"][2]["lastTransitionTime"], time(t1));

        v.phase = Phase::Succeeded;
        v.run = Run::Terminated(Terminated {
            exit_code: 0,
            started_at: t0,
            finished_at: t1,
            container_id: String::new(),
        });
        let s = v.status_patch(t1)["status"].clone();
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][1]["reason"], "PodCompleted");
        assert_eq!(s["conditions"][2]["reason"], "PodCompleted");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["terminated"]["reason"], "Completed");
        assert_eq!(c["state"]["terminated"]["containerID"], c["containerID"]);
    }
}
