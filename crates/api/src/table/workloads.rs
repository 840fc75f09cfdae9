//! Row printers for workload kinds: Pod (with kubectl's STATUS reason logic), the pod
//! controllers, Jobs and CronJobs, HPAs, PDBs and ControllerRevisions.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::duration::{age, human_duration, since, timestamp};
use super::format::{
    Selector, at, boolean, containers, count, format_labels, format_selector, int, int_or_string,
    int0, is_set, list, name, nonempty, object, or_none, s, selector, text,
};

pub(super) fn pod(pod: &Value, now: Timestamp) -> Vec<Value> {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let status = pod.get("status").unwrap_or(&Value::Null);
    let init_specs = list(spec, &["initContainers"]);
    let is_sidecar = |c: &Value| text(c, &["restartPolicy"]) == "Always";
    let sidecar_named = |n: &str| {
        init_specs
            .iter()
            .any(|c| text(c, &["name"]) == n && is_sidecar(c))
    };

    let total =
        list(spec, &["containers"]).len() + init_specs.iter().filter(|c| is_sidecar(c)).count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;

    let phase = text(status, &["phase"]);
    let mut reason = nonempty(status, &["reason"]).unwrap_or(phase).to_owned();
    let conditions = list(status, &["conditions"]);
    if conditions
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_owned();
    }

    let mut initializing = false;
    for (i, cs) in list(status, &["initContainerStatuses"]).iter().enumerate() {
        let n = int0(cs, &["restartCount"]);
        let finished = last_finished_at(cs);
        restarts += n;
        later(&mut last_restart, finished);
        let sidecar = sidecar_named(text(cs, &["name"]));
        if sidecar {
            sidecar_restarts += n;
            later(&mut last_sidecar_restart, finished);
        }
        let terminated = at(cs, &["state", "terminated"]).filter(|t| t.is_object());
        if terminated.is_some_and(|t| int0(t, &["exitCode"]) == 0) {
            continue;
        }
        if sidecar && boolean(cs, &["started"]) == Some(true) {
            if boolean(cs, &["ready"]) == Some(true) {
                ready += 1;
            }
            continue;
        }
        let waiting =
            nonempty(cs, &["state", "waiting", "reason"]).filter(|r| *r != "PodInitializing");
        reason = match (terminated, waiting) {
            (Some(t), _) => match nonempty(t, &["reason"]) {
                Some(r) => format!("Init:{r}"),
                None => exit_reason("Init:", t),
            },
            (None, Some(w)) => format!("Init:{w}"),
            (None, None) => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    let condition_true = |ty: &str| {
        conditions
            .iter()
            .any(|c| text(c, &["type"]) == ty && text(c, &["status"]) == "True")
    };
    if !initializing || condition_true("Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // Reverse order so that the first container's reason wins.
        for cs in list(status, &["containerStatuses"]).iter().rev() {
            restarts += int0(cs, &["restartCount"]);
            later(&mut last_restart, last_finished_at(cs));
            let terminated = at(cs, &["state", "terminated"]).filter(|t| t.is_object());
            if let Some(w) = nonempty(cs, &["state", "waiting", "reason"]) {
                reason = w.to_owned();
            } else if let Some(t) = terminated {
                reason = match nonempty(t, &["reason"]) {
                    Some(r) => r.to_owned(),
                    None => exit_reason("", t),
                };
            } else if boolean(cs, &["ready"]) == Some(true)
                && at(cs, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true("Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_owned();
        }
    }

    if is_set(pod, &["metadata", "deletionTimestamp"]) {
        if text(status, &["reason"]) == "NodeLost" {
            reason = "Unknown".to_owned();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_owned();
        }
    }

    let restarts = match last_restart {
        Some(ts) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(ts), now)),
        _ => restarts.to_string(),
    };

    let gates = list(spec, &["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let passing = gates
            .iter()
            .filter(|g| {
                let ty = text(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| text(c, &["type"]) == ty)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{passing}/{}", gates.len())
    };

    // podIPs[0] is what upstream prints; podIP mirrors it on any consistent object.
    let pod_ip = list(status, &["podIPs"])
        .first()
        .map_or_else(|| text(status, &["podIP"]), |ip| text(ip, &["ip"]));
    vec![
        s(name(pod)),
        s(format!("{ready}/{total}")),
        s(reason),
        s(restarts),
        age(pod, now),
        or_none(pod_ip),
        or_none(text(spec, &["nodeName"])),
        or_none(text(status, &["nominatedNodeName"])),
        s(readiness_gates),
    ]
}

/// `Signal:N` / `ExitCode:N` for a terminated state without a reason.
fn exit_reason(prefix: &str, terminated: &Value) -> String {
    match int0(terminated, &["signal"]) {
        0 => format!("{prefix}ExitCode:{}", int0(terminated, &["exitCode"])),
        sig => format!("{prefix}Signal:{sig}"),
    }
}

fn last_finished_at(cs: &Value) -> Option<Timestamp> {
    timestamp(at(cs, &["lastState", "terminated", "finishedAt"]))
}

fn later(acc: &mut Option<Timestamp>, candidate: Option<Timestamp>) {
    if candidate > *acc {
        *acc = candidate;
    }
}

/// Table row conditions upstream attaches to finished pods.
pub(super) fn pod_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match text(pod, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

fn template_spec(obj: &Value) -> Option<&Value> {
    at(obj, &["spec", "template", "spec"])
}

/// Replica counts that are pointers in v1 default to 1 when the object is decoded.
fn replicas(obj: &Value) -> i64 {
    int(obj, &["spec", "replicas"]).unwrap_or(1)
}

pub(super) fn pod_template(obj: &Value, _now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(at(obj, &["template", "spec"]));
    let labels = format_labels(object(obj, &["template", "metadata", "labels"]));
    vec![s(name(obj)), names, images, s(labels)]
}

pub(super) fn deployment(obj: &Value, now: Timestamp) -> Vec<Value> {
    let ready = int0(obj, &["status", "readyReplicas"]);
    let (names, images) = containers(template_spec(obj));
    // printDeployment uses the selector's String() directly, not FormatLabelSelector.
    let sel = match selector(at(obj, &["spec", "selector"])) {
        Selector::Nothing => String::new(),
        Selector::Text(t) => t,
        Selector::Invalid => "<invalid>".to_owned(),
    };
    vec![
        s(name(obj)),
        s(format!("{ready}/{}", replicas(obj))),
        json!(int0(obj, &["status", "updatedReplicas"])),
        json!(int0(obj, &["status", "availableReplicas"])),
        age(obj, now),
        names,
        images,
        s(sel),
    ]
}

pub(super) fn replica_set(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(template_spec(obj));
    vec![
        s(name(obj)),
        json!(replicas(obj)),
        json!(int0(obj, &["status", "replicas"])),
        json!(int0(obj, &["status", "readyReplicas"])),
        age(obj, now),
        names,
        images,
        s(format_selector(at(obj, &["spec", "selector"]))),
    ]
}

pub(super) fn replication_controller(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(template_spec(obj));
    vec![
        s(name(obj)),
        json!(replicas(obj)),
        json!(int0(obj, &["status", "replicas"])),
        json!(int0(obj, &["status", "readyReplicas"])),
        age(obj, now),
        names,
        images,
        s(format_labels(object(obj, &["spec", "selector"]))),
    ]
}

pub(super) fn stateful_set(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(template_spec(obj));
    let ready = int0(obj, &["status", "readyReplicas"]);
    vec![
        s(name(obj)),
        s(format!("{ready}/{}", replicas(obj))),
        age(obj, now),
        names,
        images,
    ]
}

pub(super) fn daemon_set(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(template_spec(obj));
    let st = |f: &str| json!(int0(obj, &["status", f]));
    vec![
        s(name(obj)),
        st("desiredNumberScheduled"),
        st("currentNumberScheduled"),
        st("numberReady"),
        st("updatedNumberScheduled"),
        st("numberAvailable"),
        s(format_labels(object(
            obj,
            &["spec", "template", "spec", "nodeSelector"],
        ))),
        age(obj, now),
        names,
        images,
        s(format_selector(at(obj, &["spec", "selector"]))),
    ]
}

/// `hasJobCondition`: the first condition of that type decides.
fn job_condition(obj: &Value, ty: &str) -> bool {
    list(obj, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == ty)
        .is_some_and(|c| text(c, &["status"]) == "True")
}

pub(super) fn job(obj: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int0(obj, &["status", "succeeded"]);
    let completions = match int(obj, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(obj, &["spec", "parallelism"]) {
            Some(p) if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = timestamp(at(obj, &["status", "startTime"]));
    let end = timestamp(at(obj, &["status", "completionTime"]));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start)),
        (Some(start), Some(end)) => human_duration(end.duration_since(start)),
    };
    let status = if job_condition(obj, "Complete") {
        "Complete"
    } else if job_condition(obj, "Failed") {
        "Failed"
    } else if is_set(obj, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else if job_condition(obj, "Suspended") {
        "Suspended"
    } else if job_condition(obj, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = containers(template_spec(obj));
    vec![
        s(name(obj)),
        s(status),
        s(completions),
        s(duration),
        age(obj, now),
        names,
        images,
        s(format_selector(at(obj, &["spec", "selector"]))),
    ]
}

pub(super) fn cron_job(obj: &Value, now: Timestamp) -> Vec<Value> {
    let last_schedule = match at(obj, &["status", "lastScheduleTime"]).filter(|v| !v.is_null()) {
        Some(t) => since(timestamp(Some(t)), now),
        None => "<none>".to_owned(),
    };
    // v1 defaults `suspend` to false, so an absent field prints as upstream would after decoding.
    let suspend = match boolean(obj, &["spec", "suspend"]) {
        Some(true) => "True",
        _ => "False",
    };
    let job_spec = at(obj, &["spec", "jobTemplate", "spec"]).unwrap_or(&Value::Null);
    let (names, images) = containers(at(job_spec, &["template", "spec"]));
    vec![
        s(name(obj)),
        s(text(obj, &["spec", "schedule"])),
        s(nonempty(obj, &["spec", "timeZone"]).unwrap_or("<none>")),
        s(suspend),
        json!(count(obj, &["status", "active"])),
        s(last_schedule),
        age(obj, now),
        names,
        images,
        s(format_selector(at(job_spec, &["selector"]))),
    ]
}

pub(super) fn pdb(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        s(name(obj)),
        s(int_or_string(at(obj, &["spec", "minAvailable"]), "N/A")),
        s(int_or_string(at(obj, &["spec", "maxUnavailable"]), "N/A")),
        json!(int0(obj, &["status", "disruptionsAllowed"])),
        age(obj, now),
    ]
}

pub(super) fn controller_revision(obj: &Value, now: Timestamp) -> Vec<Value> {
    let owner = list(obj, &["metadata", "ownerReferences"])
        .iter()
        .find(|r| boolean(r, &["controller"]) == Some(true));
    let controller = owner.map_or_else(
        || "<none>".to_owned(),
        |r| {
            let api_version = text(r, &["apiVersion"]);
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let kind = text(r, &["kind"]);
            let n = text(r, &["name"]);
            match (group, kind) {
                ("", "") => n.to_owned(),
                ("", k) => format!("{}/{n}", k.to_lowercase()),
                (g, k) => format!("{}.{}/{n}", k.to_lowercase(), g.to_lowercase()),
            }
        },
    );
    vec![
        s(name(obj)),
        s(controller),
        json!(int0(obj, &["revision"])),
        age(obj, now),
    ]
}

/// Quantities are printed as stored; the apiserver stores them in canonical form.
fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "<nil>".to_owned(),
    }
}

fn percent(v: Option<i64>, fallback: &str) -> String {
    v.map_or_else(|| fallback.to_owned(), |p| format!("{p}%"))
}

/// `formatHPAMetrics` over autoscaling/v2 metrics (v1's CPU target is mapped onto them).
fn hpa_metrics(obj: &Value) -> String {
    let mut specs: Vec<Value> = list(obj, &["spec", "metrics"]).to_vec();
    let mut statuses: Vec<Value> = list(obj, &["status", "currentMetrics"]).to_vec();
    if specs.is_empty() {
        // autoscaling/v1 objects and v2 objects without metrics both end up with a CPU
        // utilization target once decoded (v2 defaults it to 80%).
        let target = int(obj, &["spec", "targetCPUUtilizationPercentage"]).unwrap_or(80);
        specs.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": target}}}));
        if let Some(cur) = int(obj, &["status", "currentCPUUtilizationPercentage"]) {
            statuses = vec![
                json!({"type": "Resource", "resource": {"current": {"averageUtilization": cur}}}),
            ];
        }
    }
    const MAX: usize = 2;
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let st = |src: &str| {
            statuses
                .get(i)
                .and_then(|s| s.get(src))
                .filter(|v| v.is_object())
        };
        let item = match text(spec, &["type"]) {
            "External" | "Object" => {
                let src = if text(spec, &["type"]) == "External" {
                    "external"
                } else {
                    "object"
                };
                let target = at(spec, &[src, "target"]).unwrap_or(&Value::Null);
                if let Some(avg) = target.get("averageValue").filter(|v| !v.is_null()) {
                    let cur = st(src)
                        .and_then(|s| at(s, &["current", "averageValue"]))
                        .filter(|v| !v.is_null())
                        .map_or_else(|| "<unknown>".to_owned(), |v| quantity(Some(v)));
                    format!("{cur}/{} (avg)", quantity(Some(avg)))
                } else {
                    let cur = st(src).map_or_else(
                        || "<unknown>".to_owned(),
                        |s| quantity(at(s, &["current", "value"])),
                    );
                    format!("{cur}/{}", quantity(target.get("value")))
                }
            }
            "Pods" => {
                let cur = st("pods").map_or_else(
                    || "<unknown>".to_owned(),
                    |s| quantity(at(s, &["current", "averageValue"])),
                );
                format!(
                    "{cur}/{}",
                    quantity(at(spec, &["pods", "target", "averageValue"]))
                )
            }
            "Resource" | "ContainerResource" => {
                let src = if text(spec, &["type"]) == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let res = text(spec, &[src, "name"]);
                let target = at(spec, &[src, "target"]).unwrap_or(&Value::Null);
                if let Some(avg) = target.get("averageValue").filter(|v| !v.is_null()) {
                    let cur = st(src).map_or_else(
                        || "<unknown>".to_owned(),
                        |s| quantity(at(s, &["current", "averageValue"])),
                    );
                    format!("{res}: {cur}/{}", quantity(Some(avg)))
                } else {
                    let cur = percent(
                        st(src).and_then(|s| int(s, &["current", "averageUtilization"])),
                        "<unknown>",
                    );
                    let tgt = percent(int(target, &["averageUtilization"]), "<auto>");
                    format!("{res}: {cur}/{tgt}")
                }
            }
            _ => "<unknown type>".to_owned(),
        };
        out.push(item);
    }
    let total = out.len();
    if total > MAX {
        out.truncate(MAX);
        return format!("{} + {} more...", out.join(", "), total - MAX);
    }
    out.join(", ")
}

pub(super) fn hpa(obj: &Value, now: Timestamp) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        text(obj, &["spec", "scaleTargetRef", "kind"]),
        text(obj, &["spec", "scaleTargetRef", "name"])
    );
    // minReplicas defaults to 1 in both autoscaling/v1 and v2.
    let min = int(obj, &["spec", "minReplicas"]).unwrap_or(1);
    vec![
        s(name(obj)),
        s(reference),
        s(hpa_metrics(obj)),
        s(min.to_string()),
        json!(int0(obj, &["spec", "maxReplicas"])),
        json!(int0(obj, &["status", "currentReplicas"])),
        age(obj, now),
    ]
}
