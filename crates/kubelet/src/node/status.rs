//! The pod status a real node reports, shaped like upstream's `generateAPIPodStatus`: the phase
//! from container states (`getPhase`), the kubelet-owned conditions, and a status per init and
//! app container. Pure functions of what the pod worker knows, so they are tested on tables.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::cri::State;
use crate::simulated::status::time;

/// One run of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub state: State,
}

/// What the worker knows about one container of the pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    pub name: String,
    /// The image as the spec names it, normalized (`docker.io/library/busybox:latest`).
    pub image: String,
    /// `<name>@sha256:...` or the image id once known.
    pub image_id: String,
    /// An init container with `restartPolicy: Always`.
    pub sidecar: bool,
    pub current: Option<Instance>,
    pub previous: Option<Instance>,
    pub restart_count: i32,
    /// Why the container is not running (`ContainerCreating`, `CrashLoopBackOff`,
    /// `ErrImagePull`...), with a message.
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub started: bool,
    pub volume_mounts: Vec<Value>,
    pub resources: Option<Value>,
}

impl ContainerView {
    pub fn running(&self) -> bool {
        matches!(
            self.current.as_ref().map(|i| &i.state),
            Some(State::Running { .. })
        )
    }

    /// The exit code of the latest run, when it has ended.
    pub fn exit_code(&self) -> Option<i32> {
        match self.current.as_ref().map(|i| &i.state) {
            Some(State::Exited { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

pub const RUNTIME_PREFIX: &str = "containerd://";

fn terminated(i: &Instance) -> Option<Value> {
    let State::Exited {
        code,
        oom_killed,
        started_at,
        finished_at,
        message,
    } = &i.state
    else {
        return None;
    };
    let reason = if *oom_killed {
        "OOMKilled"
    } else if *code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": code,
        "reason": reason,
        "startedAt": started_at.map(time),
        "finishedAt": time(*finished_at),
        "containerID": format!("{RUNTIME_PREFIX}{}", i.id),
    });
    if !message.is_empty() {
        t["message"] = json!(message);
    }
    Some(json!({ "terminated": t }))
}

/// The `containerStatuses[]` entry of one container.
pub fn container_status(c: &ContainerView) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "restartCount": c.restart_count,
        "ready": c.ready && c.running(),
        "started": c.started && c.running(),
    });
    let current_state = c.current.as_ref().map(|i| &i.state);
    let (state, last) = match (current_state, &c.waiting) {
        (Some(State::Running { started_at, .. }), _) => (
            json!({ "running": { "startedAt": time(*started_at) } }),
            c.previous.as_ref().and_then(terminated),
        ),
        // Exited and waiting to restart: the run that ended is the last state.
        (Some(State::Exited { .. }), Some((reason, message))) => (
            json!({ "waiting": { "reason": reason, "message": message } }),
            c.current.as_ref().and_then(terminated),
        ),
        (Some(State::Exited { .. }), None) => (
            c.current
                .as_ref()
                .and_then(terminated)
                .unwrap_or_else(|| json!({})),
            c.previous.as_ref().and_then(terminated),
        ),
        (None, Some((reason, message))) => {
            let mut w = json!({ "reason": reason });
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            (
                json!({ "waiting": w }),
                c.previous.as_ref().and_then(terminated),
            )
        }
        (None, None) => (
            json!({ "waiting": { "reason": "ContainerCreating" } }),
            None,
        ),
    };
    v["state"] = state;
    v["lastState"] = last.unwrap_or_else(|| json!({}));
    if let Some(i) = &c.current {
        v["containerID"] = json!(format!("{RUNTIME_PREFIX}{}", i.id));
    }
    if !c.volume_mounts.is_empty() {
        v["volumeMounts"] = json!(c.volume_mounts);
    }
    if let Some(r) = &c.resources {
        v["resources"] = r.clone();
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// Whether every init container is done: regular ones exited 0, sidecars started.
pub fn initialized(init: &[ContainerView]) -> bool {
    init.iter().all(|c| {
        if c.sidecar {
            c.running() && c.started
        } else {
            c.exit_code() == Some(0)
        }
    })
}

/// Upstream's `getPhase`.
pub fn phase(restart_policy: &str, init: &[ContainerView], app: &[ContainerView]) -> Phase {
    for c in init.iter().filter(|c| !c.sidecar) {
        if let Some(code) = c.exit_code()
            && code != 0
            && restart_policy == "Never"
        {
            return Phase::Failed;
        }
    }
    if !initialized(init) {
        return Phase::Pending;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in app {
        match c.current.as_ref().map(|i| &i.state) {
            Some(State::Running { .. }) => running += 1,
            Some(State::Exited { code, .. }) => {
                stopped += 1;
                if *code == 0 {
                    succeeded += 1;
                }
            }
            None if c.previous.is_some() => stopped += 1,
            None => waiting += 1,
        }
    }
    if waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 {
        if restart_policy == "Always" {
            return Phase::Running;
        }
        if stopped == succeeded {
            return Phase::Succeeded;
        }
        if restart_policy == "Never" {
            return Phase::Failed;
        }
        return Phase::Running;
    }
    Phase::Pending
}

/// Everything the pod status is generated from.
pub struct PodView<'a> {
    pub phase: Phase,
    pub restart_policy: &'a str,
    pub init: &'a [ContainerView],
    pub app: &'a [ContainerView],
    pub sandbox_ready: bool,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    pub start_time: Timestamp,
    pub qos_class: &'a str,
    /// The PodScheduled condition as the pod has it.
    pub scheduled: Option<Value>,
    /// Types of other conditions on the pod (e.g. DisruptionTarget), kept in place.
    pub other_conditions: Vec<String>,
    /// Set when the kubelet itself failed the pod (eviction, deadline): reason and message.
    pub failure: Option<(String, String)>,
}

const OWNED: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// The strategic merge patch for `pods/status`; `transitions` keeps each owned condition's
/// last status and transition time across calls.
pub fn status_patch(
    p: &PodView<'_>,
    transitions: &mut HashMap<&'static str, (bool, Timestamp)>,
    now: Timestamp,
) -> Value {
    let terminal = p.phase.terminal();
    let init_done = initialized(p.init);
    let unready: Vec<&str> = p
        .app
        .iter()
        .filter(|c| !(c.ready && c.running()))
        .map(|c| c.name.as_str())
        .collect();
    let incomplete: Vec<&str> = p
        .init
        .iter()
        .filter(|c| {
            if c.sidecar {
                !(c.running() && c.started)
            } else {
                c.exit_code() != Some(0)
            }
        })
        .map(|c| c.name.as_str())
        .collect();
    let mut conditions = Vec::new();
    for ty in OWNED {
        let (status, reason, message): (bool, Option<&str>, Option<String>) = match ty {
            "PodReadyToStartContainers" => (p.sandbox_ready && !terminal, None, None),
            "Initialized" => {
                if p.phase == Phase::Succeeded {
                    (true, Some("PodCompleted"), None)
                } else if init_done {
                    (true, None, None)
                } else {
                    (
                        false,
                        Some("ContainersNotInitialized"),
                        Some(format!(
                            "containers with incomplete status: [{}]",
                            incomplete.join(" ")
                        )),
                    )
                }
            }
            _ => {
                if p.phase == Phase::Succeeded {
                    (false, Some("PodCompleted"), None)
                } else if !init_done {
                    (
                        false,
                        Some("ContainersNotReady"),
                        Some(format!(
                            "containers with unready status: [{}]",
                            p.app
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        )),
                    )
                } else if unready.is_empty() && !terminal {
                    (true, None, None)
                } else {
                    let reason = if p.phase == Phase::Failed {
                        "PodFailed"
                    } else {
                        "ContainersNotReady"
                    };
                    (
                        false,
                        Some(reason),
                        Some(format!(
                            "containers with unready status: [{}]",
                            unready.join(" ")
                        )),
                    )
                }
            }
        };
        let ltt = match transitions.get(ty) {
            Some((s, t)) if *s == status => *t,
            _ => now,
        };
        transitions.insert(ty, (status, ltt));
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
    conditions.push(p.scheduled.clone().unwrap_or_else(|| {
        json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": time(p.start_time),
        })
    }));
    let mut order: Vec<Value> = OWNED
        .iter()
        .chain(std::iter::once(&"PodScheduled"))
        .map(|t| json!({ "type": t }))
        .collect();
    order.extend(p.other_conditions.iter().map(|t| json!({ "type": t })));

    let mut status = json!({
        "$setElementOrder/conditions": order,
        "phase": p.phase.as_str(),
        "conditions": conditions,
        "hostIP": p.host_ip.to_string(),
        "hostIPs": [{ "ip": p.host_ip.to_string() }],
        "startTime": time(p.start_time),
        "containerStatuses": p.app.iter().map(container_status).collect::<Vec<_>>(),
        "qosClass": p.qos_class,
    });
    if !p.init.is_empty() {
        status["initContainerStatuses"] =
            json!(p.init.iter().map(container_status).collect::<Vec<_>>());
    }
    if let Some(ip) = p.pod_ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{ "ip": ip.to_string() }]);
    }
    if let Some((reason, message)) = &p.failure {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn running(name: &str) -> ContainerView {
        ContainerView {
            name: name.into(),
            current: Some(Instance {
                id: format!("{name}-1"),
                state: State::Running {
                    pid: 10,
                    started_at: at(1),
                },
            }),
            ready: true,
            started: true,
            ..Default::default()
        }
    }

    fn exited(name: &str, code: i32) -> ContainerView {
        ContainerView {
            name: name.into(),
            current: Some(Instance {
                id: format!("{name}-1"),
                state: State::Exited {
                    code,
                    oom_killed: false,
                    started_at: Some(at(1)),
                    finished_at: at(2),
                    message: String::new(),
                },
            }),
            ..Default::default()
        }
    }

    fn waiting(name: &str) -> ContainerView {
        ContainerView {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_upstream() {
        let cases: Vec<(&str, Vec<ContainerView>, Vec<ContainerView>, Phase)> = vec![
            ("Always", vec![], vec![waiting("a")], Phase::Pending),
            (
                "Always",
                vec![],
                vec![running("a"), waiting("b")],
                Phase::Pending,
            ),
            ("Always", vec![], vec![running("a")], Phase::Running),
            ("Always", vec![], vec![exited("a", 0)], Phase::Running),
            ("Never", vec![], vec![exited("a", 0)], Phase::Succeeded),
            (
                "Never",
                vec![],
                vec![exited("a", 1), exited("b", 0)],
                Phase::Failed,
            ),
            ("OnFailure", vec![], vec![exited("a", 1)], Phase::Running),
            ("OnFailure", vec![], vec![exited("a", 0)], Phase::Succeeded),
            (
                "Never",
                vec![],
                vec![running("a"), exited("b", 1)],
                Phase::Running,
            ),
            (
                "Always",
                vec![waiting("i")],
                vec![waiting("a")],
                Phase::Pending,
            ),
            (
                "Always",
                vec![exited("i", 0)],
                vec![running("a")],
                Phase::Running,
            ),
            (
                "Never",
                vec![exited("i", 2)],
                vec![waiting("a")],
                Phase::Failed,
            ),
            (
                "OnFailure",
                vec![exited("i", 2)],
                vec![waiting("a")],
                Phase::Pending,
            ),
        ];
        for (policy, init, app, want) in cases {
            assert_eq!(
                phase(policy, &init, &app),
                want,
                "{policy} {init:?} {app:?}"
            );
        }
    }

    #[test]
    fn crash_loop_reports_the_last_run() {
        let mut c = exited("a", 1);
        c.restart_count = 3;
        c.waiting = Some(("CrashLoopBackOff".into(), "back-off 40s".into()));
        let s = container_status(&c);
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(s["restartCount"], 3);
        assert_eq!(s["ready"], false);
    }

    #[test]
    fn conditions_name_unready_containers() {
        let mut b = running("b");
        b.ready = false;
        let app = [running("a"), b];
        let view = PodView {
            phase: Phase::Running,
            restart_policy: "Always",
            init: &[],
            app: &app,
            sandbox_ready: true,
            host_ip: Ipv4Addr::LOCALHOST,
            pod_ip: Some(Ipv4Addr::new(10, 42, 0, 5)),
            start_time: at(0),
            qos_class: "BestEffort",
            scheduled: None,
            other_conditions: vec![],
            failure: None,
        };
        let mut tr = HashMap::new();
        let p = status_patch(&view, &mut tr, at(5));
        let ready = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [b]");
        assert_eq!(p["status"]["podIP"], "10.42.0.5");
    }
}
