//! Workload controllers (apps, batch, autoscaling and ReplicationController): selectors that
//! must match their pod templates, rollout strategies, job and cron job specs, autoscalers,
//! and the spec fields that are immutable on update.

use super::FieldError;
use super::cron;
use super::meta::{
    self, immutable, nonnegative, selector_is_empty, selector_matches, validate_label_selector,
};
use super::names::{self, regex_error};
use super::path::{Get, Path, at};
use super::pod::validate_pod_template_spec;
use serde_json::{Value, json};

const SELECTOR_MISMATCH: &str = "`selector` does not match template `labels`";
const MAX_INDEXED_PARALLELISM: i64 = 100_000;

fn template_labels(template: Option<&Value>) -> Value {
    template
        .and_then(|t| at(t, &["metadata", "labels"]))
        .cloned()
        .unwrap_or_else(|| json!({}))
}

fn restart_policy_of(template: Option<&Value>) -> &str {
    template
        .and_then(|t| at(t, &["spec", "restartPolicy"]))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Selector presence, validity and non-emptiness as Deployment, ReplicaSet and StatefulSet
/// check it; returns whether the selector converts (upstream's `LabelSelectorAsSelector`).
fn required_selector(spec: &Value, path: &Path, what: &str, errs: &mut Vec<FieldError>) -> bool {
    let sel = spec.field("selector");
    let Some(sel) = sel else {
        errs.push(FieldError::required(path.child("selector"), ""));
        return true;
    };
    let sel_errs = validate_label_selector(Some(sel), &path.child("selector"));
    let valid = sel_errs.is_empty();
    errs.extend(sel_errs);
    if selector_is_empty(sel) {
        errs.push(FieldError::invalid(
            path.child("selector"),
            sel.clone(),
            format!("empty selector is invalid for {what}"),
        ));
    }
    valid
}

/// Whether an absent selector or one that does not select the template's labels; an absent
/// selector selects nothing, an empty one everything.
fn selector_mismatch(sel: Option<&Value>, template: Option<&Value>) -> bool {
    let labels = template.and_then(|t| at(t, &["metadata", "labels"]));
    match sel {
        None => true,
        Some(sel) => !selector_is_empty(sel) && !selector_matches(sel, labels),
    }
}

/// `ValidatePodTemplateSpecForReplicaSet`, shared by Deployments and ReplicaSets.
fn template_for_replica_set(spec: &Value, path: &Path, kind: &str) -> Vec<FieldError> {
    let template = spec.field("template");
    let tpath = path.child("template");
    let mut errs = Vec::new();
    if selector_mismatch(spec.field("selector"), template) {
        errs.push(FieldError::invalid(
            tpath.children(&["metadata", "labels"]),
            template_labels(template),
            SELECTOR_MISMATCH,
        ));
    }
    errs.extend(validate_pod_template_spec(
        template.unwrap_or(&Value::Null),
        &tpath,
    ));
    errs.extend(always_restart_and_no_deadline(
        template, &tpath, kind, false,
    ));
    errs
}

fn always_restart_and_no_deadline(
    template: Option<&Value>,
    tpath: &Path,
    kind: &str,
    forbidden: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let policy = restart_policy_of(template);
    if policy != "Always" {
        errs.push(FieldError::not_supported(
            tpath.children(&["spec", "restartPolicy"]),
            json!(policy),
            &["Always"],
        ));
    }
    if let Some(d) = template.and_then(|t| at(t, &["spec", "activeDeadlineSeconds"])) {
        let p = tpath.children(&["spec", "activeDeadlineSeconds"]);
        let msg = format!("activeDeadlineSeconds in {kind} is not Supported");
        errs.push(if forbidden {
            FieldError::forbidden(p, msg)
        } else {
            FieldError::invalid(p, d.clone(), msg)
        });
    }
    errs
}

fn nonneg_field(spec: &Value, field: &str, path: &Path) -> Option<FieldError> {
    nonnegative(spec.int_of(field).unwrap_or(0), &path.child(field))
}

pub fn validate_deployment(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs: Vec<FieldError> = nonneg_field(spec, "replicas", &path).into_iter().collect();
    if required_selector(spec, &path, "deployment", &mut errs) {
        errs.extend(template_for_replica_set(spec, &path, "ReplicaSet"));
    } else {
        let sel = spec.field("selector").cloned().unwrap_or(Value::Null);
        errs.push(FieldError::invalid(
            path.child("selector"),
            sel,
            "invalid label selector",
        ));
    }
    errs.extend(validate_deployment_strategy(
        spec.field("strategy"),
        &path.child("strategy"),
    ));
    errs.extend(nonneg_field(spec, "minReadySeconds", &path));
    if spec.has("revisionHistoryLimit") {
        errs.extend(nonneg_field(spec, "revisionHistoryLimit", &path));
    }
    if let Some(pds) = spec.int_of("progressDeadlineSeconds") {
        let p = path.child("progressDeadlineSeconds");
        if pds <= 0 {
            errs.push(FieldError::invalid(
                &p,
                json!(pds),
                "must be greater than 0",
            ));
        }
        if pds <= spec.int_of("minReadySeconds").unwrap_or(0) {
            errs.push(FieldError::invalid(
                &p,
                json!(pds),
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

fn validate_deployment_strategy(strategy: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let null = Value::Null;
    let strategy = strategy.unwrap_or(&null);
    match strategy.str_of("type") {
        "Recreate" if strategy.has("rollingUpdate") => vec![FieldError::forbidden(
            path.child("rollingUpdate"),
            "may not be specified when strategy `type` is 'Recreate'",
        )],
        "Recreate" => vec![],
        "RollingUpdate" => match strategy.field("rollingUpdate") {
            None => vec![FieldError::required(
                path.child("rollingUpdate"),
                "this should be defaulted and never be nil",
            )],
            Some(ru) => {
                let p = path.child("rollingUpdate");
                let (unavailable, surge) = (ru.field("maxUnavailable"), ru.field("maxSurge"));
                let mut errs = positive_int_or_percent(unavailable, &p.child("maxUnavailable"));
                errs.extend(positive_int_or_percent(surge, &p.child("maxSurge")));
                if int_or_percent_value(unavailable) == 0 && int_or_percent_value(surge) == 0 {
                    errs.push(FieldError::invalid(
                        p.child("maxUnavailable"),
                        unavailable.cloned().unwrap_or(json!(0)),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
                errs.extend(not_more_than_100_percent(
                    unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs
            }
        },
        _ => vec![FieldError::not_supported(
            path,
            strategy.clone(),
            &["Recreate", "RollingUpdate"],
        )],
    }
}

fn positive_int_or_percent(v: Option<&Value>, path: &Path) -> Vec<FieldError> {
    match v {
        Some(Value::String(s)) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
                vec![]
            } else {
                let msg = regex_error(
                    "a valid percent string must be a numeric string followed by an ending '%'",
                    "[0-9]+%",
                    &["1%", "93%"],
                );
                vec![FieldError::invalid(path, json!(s), msg)]
            }
        }
        Some(v) => nonnegative(v.as_i64().unwrap_or(0), path)
            .into_iter()
            .collect(),
        None => vec![],
    }
}

fn int_or_percent_value(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
        Some(v) => v.as_i64().unwrap_or(0),
        None => 0,
    }
}

fn not_more_than_100_percent(v: Option<&Value>, path: &Path) -> Option<FieldError> {
    let s = v?.as_str()?;
    let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
    (pct > 100).then(|| FieldError::invalid(path, json!(s), "must not be greater than 100%"))
}

pub fn validate_replica_set(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs: Vec<FieldError> = nonneg_field(spec, "replicas", &path).into_iter().collect();
    errs.extend(nonneg_field(spec, "minReadySeconds", &path));
    if required_selector(spec, &path, "deployment", &mut errs) {
        errs.extend(template_for_replica_set(spec, &path, "ReplicaSet"));
    } else {
        let sel = spec.field("selector").cloned().unwrap_or(Value::Null);
        errs.push(FieldError::invalid(
            path.child("selector"),
            sel,
            "invalid label selector",
        ));
    }
    errs
}

pub fn validate_replication_controller(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs: Vec<FieldError> = nonneg_field(spec, "minReadySeconds", &path)
        .into_iter()
        .collect();
    let selector = spec.field("selector");
    if selector
        .and_then(Value::as_object)
        .is_none_or(|m| m.is_empty())
    {
        errs.push(FieldError::required(path.child("selector"), ""));
    }
    errs.extend(nonneg_field(spec, "replicas", &path));
    let tpath = path.child("template");
    match spec.field("template") {
        None => errs.push(FieldError::required(&tpath, "")),
        Some(template) => {
            let as_selector =
                json!({ "matchLabels": selector.cloned().unwrap_or_else(|| json!({})) });
            if selector_mismatch(Some(&as_selector), Some(template)) {
                errs.push(FieldError::invalid(
                    tpath.children(&["metadata", "labels"]),
                    template_labels(Some(template)),
                    SELECTOR_MISMATCH,
                ));
            }
            errs.extend(validate_pod_template_spec(template, &tpath));
            errs.extend(always_restart_and_no_deadline(
                Some(template),
                &tpath,
                "ReplicationController",
                false,
            ));
        }
    }
    errs
}

pub fn validate_stateful_set(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    match spec.str_of("podManagementPolicy") {
        "" => errs.push(FieldError::required(path.child("podManagementPolicy"), "")),
        "OrderedReady" | "Parallel" => {}
        other => errs.push(FieldError::invalid(
            path.child("podManagementPolicy"),
            json!(other),
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    let strategy = spec.field("updateStrategy").unwrap_or(&Value::Null);
    let spath = path.child("updateStrategy");
    match strategy.str_of("type") {
        "" => errs.push(FieldError::required(&spath, "")),
        "OnDelete" => {
            if let Some(ru) = strategy.field("rollingUpdate") {
                errs.push(FieldError::invalid(
                    spath.child("rollingUpdate"),
                    ru.clone(),
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        "RollingUpdate" => {
            if let Some(ru) = strategy.field("rollingUpdate") {
                let p = spath.child("rollingUpdate");
                errs.extend(nonneg_field(ru, "partition", &p));
                if let Some(mu) = ru.field("maxUnavailable") {
                    errs.extend(positive_int_or_percent(
                        Some(mu),
                        &p.child("maxUnavailable"),
                    ));
                    if int_or_percent_value(Some(mu)) == 0 {
                        errs.push(FieldError::invalid(
                            p.child("maxUnavailable"),
                            mu.clone(),
                            "cannot be 0",
                        ));
                    }
                    errs.extend(not_more_than_100_percent(
                        Some(mu),
                        &p.child("maxUnavailable"),
                    ));
                }
            }
        }
        _ => errs.push(FieldError::invalid(
            &spath,
            strategy.clone(),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
    if let Some(policy) = spec.field("persistentVolumeClaimRetentionPolicy") {
        for field in ["whenDeleted", "whenScaled"] {
            let v = policy.str_of(field);
            if v != "Retain" && v != "Delete" {
                errs.push(FieldError::not_supported(
                    path.children(&["persistentVolumeClaimRetentionPolicy", field]),
                    json!(v),
                    &["Retain", "Delete"],
                ));
            }
        }
    }
    errs.extend(nonneg_field(spec, "replicas", &path));
    errs.extend(nonneg_field(spec, "minReadySeconds", &path));
    if let Some(start) = spec.field("ordinals").and_then(|o| o.int_of("start")) {
        errs.extend(nonnegative(start, &path.child("ordinals.start")));
    }
    let template = spec.field("template");
    let tpath = path.child("template");
    if required_selector(spec, &path, "statefulset", &mut errs) {
        // Upstream validates only the template's metadata here, not its pod spec.
        if selector_mismatch(spec.field("selector"), template) {
            errs.push(FieldError::invalid(
                tpath.children(&["metadata", "labels"]),
                template_labels(template),
                SELECTOR_MISMATCH,
            ));
        }
        let tmeta = template.and_then(|t| t.field("metadata"));
        errs.extend(meta::validate_labels(
            tmeta.and_then(|m| m.field("labels")),
            &tpath.child("labels"),
        ));
        errs.extend(meta::validate_annotations(
            tmeta.and_then(|m| m.field("annotations")),
            &tpath.child("annotations"),
        ));
    } else {
        errs.push(FieldError::invalid(
            path.child("selector"),
            spec.field("selector").cloned().unwrap_or(Value::Null),
            "",
        ));
    }
    errs.extend(always_restart_and_no_deadline(
        template,
        &tpath,
        "StatefulSet",
        true,
    ));
    errs
}

pub fn validate_daemon_set(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let sel = spec.field("selector");
    let mut errs = validate_label_selector(sel, &path.child("selector"));
    let template = spec.field("template");
    let tpath = path.child("template");
    if errs.is_empty()
        && sel.is_none_or(|s| {
            !selector_matches(s, template.and_then(|t| at(t, &["metadata", "labels"])))
        })
    {
        errs.push(FieldError::invalid(
            tpath.children(&["metadata", "labels"]),
            template_labels(template),
            SELECTOR_MISMATCH,
        ));
    }
    if let Some(s) = sel.filter(|s| selector_is_empty(s)) {
        errs.push(FieldError::invalid(
            path.child("selector"),
            s.clone(),
            "empty selector is invalid for daemonset",
        ));
    }
    errs.extend(validate_pod_template_spec(
        template.unwrap_or(&Value::Null),
        &tpath,
    ));
    errs.extend(always_restart_and_no_deadline(
        template,
        &tpath,
        "DaemonSet",
        false,
    ));
    errs.extend(nonneg_field(spec, "minReadySeconds", &path));
    errs.extend(nonneg_field(spec, "templateGeneration", &path));
    let strategy = spec.field("updateStrategy").unwrap_or(&Value::Null);
    let spath = path.child("updateStrategy");
    match strategy.str_of("type") {
        "OnDelete" => {}
        "RollingUpdate" => match strategy.field("rollingUpdate") {
            None => errs.push(FieldError::required(spath.child("rollingUpdate"), "")),
            Some(ru) => {
                let p = spath.child("rollingUpdate");
                let (unavailable, surge) = (ru.field("maxUnavailable"), ru.field("maxSurge"));
                errs.extend(positive_int_or_percent(
                    unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs.extend(positive_int_or_percent(surge, &p.child("maxSurge")));
                errs.extend(not_more_than_100_percent(
                    unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs.extend(not_more_than_100_percent(surge, &p.child("maxSurge")));
                match (
                    int_or_percent_value(unavailable) != 0,
                    int_or_percent_value(surge) != 0,
                ) {
                    (true, true) => errs.push(FieldError::invalid(
                        p.child("maxSurge"),
                        surge.cloned().unwrap_or(Value::Null),
                        "may not be set when maxUnavailable is non-zero",
                    )),
                    (false, false) => errs.push(FieldError::required(
                        p.child("maxUnavailable"),
                        "cannot be 0 when maxSurge is 0",
                    )),
                    _ => {}
                }
            }
        },
        _ => errs.push(FieldError::not_supported(
            &spath,
            strategy.clone(),
            &["RollingUpdate", "OnDelete"],
        )),
    }
    if spec.has("revisionHistoryLimit") {
        errs.extend(nonneg_field(spec, "revisionHistoryLimit", &path));
    }
    errs
}

/// Selector changes after creation would orphan pods, so apps/v1 freezes them.
pub fn validate_selector_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let sel = |v: &Value| at(v, &["spec", "selector"]).cloned();
    immutable(
        sel(obj).as_ref(),
        sel(old).as_ref(),
        &Path::new("spec.selector"),
    )
    .into_iter()
    .collect()
}

pub fn validate_stateful_set_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let mutable = [
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let strip = |v: &Value| {
        let mut spec = v.field("spec").cloned().unwrap_or_else(|| json!({}));
        if let Some(m) = spec.as_object_mut() {
            m.retain(|k, v| !mutable.contains(&k.as_str()) && !v.is_null());
        }
        spec
    };
    if strip(obj) == strip(old) {
        return vec![];
    }
    vec![FieldError::forbidden(
        "spec",
        "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
    )]
}

/// `validateJobSpec`: the parts shared by Jobs and CronJob job templates.
fn validate_job_spec_common(spec: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for field in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if spec.has(field) {
            errs.extend(nonneg_field(spec, field, path));
        }
    }
    if let Some(mode) = spec.opt_str("completionMode") {
        if mode != "NonIndexed" && mode != "Indexed" {
            errs.push(FieldError::not_supported(
                path.child("completionMode"),
                json!(mode),
                &["NonIndexed", "Indexed"],
            ));
        }
        if mode == "Indexed" {
            if !spec.has("completions") {
                errs.push(FieldError::required(
                    path.child("completions"),
                    "when completion mode is Indexed",
                ));
            }
            if let Some(p) = spec
                .int_of("parallelism")
                .filter(|p| *p > MAX_INDEXED_PARALLELISM)
            {
                errs.push(FieldError::invalid(
                    path.child("parallelism"),
                    json!(p),
                    format!("must be less than or equal to {MAX_INDEXED_PARALLELISM} when completion mode is Indexed"),
                ));
            }
        }
    }
    if let Some(policy) = spec.opt_str("podReplacementPolicy") {
        if policy != "TerminatingOrFailed" && policy != "Failed" {
            errs.push(FieldError::not_supported(
                path.child("podReplacementPolicy"),
                json!(policy),
                &["Failed", "TerminatingOrFailed"],
            ));
        } else if spec.has("podFailurePolicy") && policy != "Failed" {
            errs.push(FieldError::not_supported(
                path.child("podReplacementPolicy"),
                json!(policy),
                &["Failed"],
            ));
        }
    }
    let template = spec.field("template");
    let tpath = path.child("template");
    errs.extend(validate_pod_template_spec(
        template.unwrap_or(&Value::Null),
        &tpath,
    ));
    let policy = restart_policy_of(template);
    if policy != "OnFailure" && policy != "Never" {
        errs.push(FieldError::not_supported(
            tpath.children(&["spec", "restartPolicy"]),
            json!(policy),
            &["OnFailure", "Never"],
        ));
    } else if policy == "OnFailure" && spec.has("podFailurePolicy") {
        errs.push(FieldError::invalid(
            tpath.children(&["spec", "restartPolicy"]),
            json!(policy),
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    errs
}

pub fn validate_job(obj: &Value) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = validate_job_spec_common(spec, &path);
    let sel = spec.field("selector");
    match sel {
        None => errs.push(FieldError::required(path.child("selector"), "")),
        Some(s) => errs.extend(validate_label_selector(Some(s), &path.child("selector"))),
    }
    let template = spec.field("template");
    let convertible = sel.is_none() || validate_label_selector(sel, &Path::default()).is_empty();
    if convertible
        && sel.is_none_or(|s| {
            !selector_matches(s, template.and_then(|t| at(t, &["metadata", "labels"])))
        })
    {
        errs.push(FieldError::invalid(
            path.children(&["template", "metadata", "labels"]),
            template_labels(template),
            SELECTOR_MISMATCH,
        ));
    }
    let name = at(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("");
    if spec.opt_str("completionMode") == Some("Indexed")
        && let Some(c) = spec.int_of("completions").filter(|c| *c > 0)
    {
        let hostname = format!("{name}-{}", c - 1);
        if !names::is_dns1123_label(&hostname).is_empty() {
            errs.push(FieldError::invalid(
                "metadata.name",
                json!(name),
                format!("will not able to create pod with invalid DNS label: {hostname}"),
            ));
        }
    }
    errs
}

pub fn validate_job_update(obj: &Value, old: &Value) -> Vec<FieldError> {
    let null = Value::Null;
    let spec = obj.field("spec").unwrap_or(&null);
    let old_spec = old.field("spec").unwrap_or(&null);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    // Elastic indexed jobs may scale completions together with parallelism.
    let elastic = spec.opt_str("completionMode") == Some("Indexed")
        && spec.int_of("completions") == spec.int_of("parallelism");
    if !elastic {
        errs.extend(immutable(
            spec.field("completions"),
            old_spec.field("completions"),
            &path.child("completions"),
        ));
    }
    errs.extend(immutable(
        spec.field("selector"),
        old_spec.field("selector"),
        &path.child("selector"),
    ));
    // A suspended job's template may still be adjusted before it first starts.
    if old_spec.bool_of("suspend") != Some(true) {
        errs.extend(immutable(
            spec.field("template"),
            old_spec.field("template"),
            &path.child("template"),
        ));
    }
    for field in [
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ] {
        errs.extend(immutable(
            spec.field(field),
            old_spec.field(field),
            &path.child(field),
        ));
    }
    errs
}

pub fn validate_cron_job(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let old_spec = old.and_then(|o| o.field("spec"));
    let path = Path::new("spec");
    let mut errs = Vec::new();
    if old.is_none() {
        let name = at(obj, &["metadata", "name"])
            .and_then(Value::as_str)
            .unwrap_or("");
        // Jobs are named `<cronjob>-<11-char timestamp>` and must stay DNS labels.
        if name.len() > 52 {
            errs.push(FieldError::invalid(
                "metadata.name",
                json!(name),
                "must be no more than 52 characters",
            ));
        }
    }
    let schedule = spec.str_of("schedule");
    let time_zone = spec.field("timeZone");
    let spath = path.child("schedule");
    if schedule.is_empty() {
        errs.push(FieldError::required(&spath, ""));
    } else {
        if let Err(e) = cron::parse(schedule) {
            errs.push(FieldError::invalid(&spath, json!(schedule), e));
        }
        let allow_tz = old_spec.is_some_and(|o| o.str_of("schedule").contains("TZ"));
        if schedule.contains("TZ") {
            if !allow_tz {
                errs.push(FieldError::invalid(
                    &spath,
                    json!(schedule),
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            } else if time_zone.is_some() {
                errs.push(FieldError::invalid(
                    &spath,
                    json!(schedule),
                    "cannot use both timeZone field and TZ or CRON_TZ in schedule",
                ));
            }
        }
    }
    if spec.has("startingDeadlineSeconds") {
        errs.extend(nonneg_field(spec, "startingDeadlineSeconds", &path));
    }
    if old_spec.is_none_or(|o| o.field("timeZone") != time_zone) {
        errs.extend(validate_time_zone(time_zone, &path.child("timeZone")));
    }
    let policy = spec.str_of("concurrencyPolicy");
    let ppath = path.child("concurrencyPolicy");
    match policy {
        "Allow" | "Forbid" | "Replace" => {}
        "" => errs.push(FieldError::required(&ppath, "")),
        _ => errs.push(FieldError::not_supported(
            &ppath,
            json!(policy),
            &["Allow", "Forbid", "Replace"],
        )),
    }
    let jt = path.child("jobTemplate");
    let job_spec = at(spec, &["jobTemplate", "spec"]).unwrap_or(&Value::Null);
    errs.extend(validate_job_spec_common(job_spec, &jt.child("spec")));
    if let Some(sel) = job_spec.field("selector") {
        errs.push(FieldError::invalid(
            jt.children(&["spec", "selector"]),
            sel.clone(),
            "`selector` will be auto-generated",
        ));
    }
    if job_spec.bool_of("manualSelector") == Some(true) {
        errs.push(FieldError::not_supported(
            jt.children(&["spec", "manualSelector"]),
            json!(true),
            &["nil", "false"],
        ));
    }
    for field in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        if spec.has(field) {
            errs.extend(nonneg_field(spec, field, &path));
        }
    }
    errs
}

fn validate_time_zone(tz: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let Some(tz) = tz.and_then(Value::as_str) else {
        return vec![];
    };
    if tz.is_empty() {
        return vec![FieldError::invalid(
            path,
            json!(tz),
            "timeZone must be nil or non-empty string",
        )];
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-_+".contains(&c))
    };
    if !tz.split('/').all(part_ok) {
        return vec![FieldError::invalid(
            path,
            json!(tz),
            format!("unknown time zone {tz}"),
        )];
    }
    let mut errs = Vec::new();
    if tz.eq_ignore_ascii_case("local") {
        errs.push(FieldError::invalid(
            path,
            json!(tz),
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
    if tz != "UTC" && jiff::tz::TimeZone::get(tz).is_err() {
        errs.push(FieldError::invalid(
            path,
            json!(tz),
            format!("unknown time zone {tz}"),
        ));
    }
    errs
}

pub fn validate_hpa(obj: &Value, version: &str) -> Vec<FieldError> {
    let spec = obj.field("spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    let mut errs = Vec::new();
    let min = spec.int_of("minReplicas");
    if let Some(m) = min.filter(|m| *m < 1) {
        errs.push(FieldError::invalid(
            path.child("minReplicas"),
            json!(m),
            "must be greater than or equal to 1",
        ));
    }
    let max = spec.int_of("maxReplicas").unwrap_or(0);
    if max < 1 {
        errs.push(FieldError::invalid(
            path.child("maxReplicas"),
            json!(max),
            "must be greater than 0",
        ));
    }
    if min.is_some_and(|m| max < m) {
        errs.push(FieldError::invalid(
            path.child("maxReplicas"),
            json!(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let target = spec.field("scaleTargetRef").unwrap_or(&Value::Null);
    let tpath = path.child("scaleTargetRef");
    for field in ["kind", "name"] {
        let v = target.str_of(field);
        if v.is_empty() {
            errs.push(FieldError::required(tpath.child(field), ""));
        } else {
            errs.extend(
                names::is_valid_path_segment_name(v)
                    .into_iter()
                    .map(|m| FieldError::invalid(tpath.child(field), json!(v), m)),
            );
        }
    }
    if version == "v1" {
        if let Some(t) = spec
            .int_of("targetCPUUtilizationPercentage")
            .filter(|t| *t < 1)
        {
            errs.push(FieldError::invalid(
                path.child("targetCPUUtilizationPercentage"),
                json!(t),
                "must be greater than 0",
            ));
        }
        return errs;
    }
    for (i, m) in spec.arr_of("metrics").iter().enumerate() {
        errs.extend(validate_metric(m, &path.child("metrics").index(i)));
    }
    if let Some(b) = spec.field("behavior") {
        for dir in ["scaleUp", "scaleDown"] {
            if let Some(rules) = b.field(dir) {
                errs.extend(validate_scaling_rules(
                    rules,
                    &path.children(&["behavior", dir]),
                ));
            }
        }
    }
    errs
}

fn validate_metric(m: &Value, path: &Path) -> Vec<FieldError> {
    const TYPES: &[&str] = &[
        "Object",
        "Pods",
        "Resource",
        "External",
        "ContainerResource",
    ];
    let mut errs = Vec::new();
    let ty = m.str_of("type");
    if ty.is_empty() {
        errs.push(FieldError::required(
            path.child("type"),
            "must specify a metric source type",
        ));
    }
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(
            path.child("type"),
            json!(ty),
            TYPES,
        ));
        return errs;
    }
    let field = match ty {
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        "External" => "external",
        _ => "containerResource",
    };
    let populated: Vec<&str> = [
        "object",
        "pods",
        "resource",
        "external",
        "containerResource",
    ]
    .into_iter()
    .filter(|f| m.has(f))
    .collect();
    if populated.len() != 1 || populated[0] != field {
        if !m.has(field) {
            errs.push(FieldError::required(
                path.child(field),
                "must populate information for the given metric source",
            ));
        }
        if populated.iter().any(|f| *f != field) {
            errs.push(FieldError::forbidden(
                path.child("type"),
                "must populate the given metric source only",
            ));
        }
    }
    errs
}

fn validate_scaling_rules(rules: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(w) = rules.int_of("stabilizationWindowSeconds") {
        let p = path.child("stabilizationWindowSeconds");
        if w < 0 {
            errs.push(FieldError::invalid(
                &p,
                json!(w),
                "must be greater than or equal to zero",
            ));
        } else if w > 3600 {
            errs.push(FieldError::invalid(
                &p,
                json!(w),
                "must be less than or equal to 3600",
            ));
        }
    }
    if let Some(sp) = rules.opt_str("selectPolicy")
        && !["Max", "Min", "Disabled"].contains(&sp)
    {
        errs.push(FieldError::not_supported(
            path.child("selectPolicy"),
            json!(sp),
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules.arr_of("policies");
    if policies.is_empty() {
        errs.push(FieldError::required(
            path.child("policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let pp = path.child("policies").index(i);
        let ty = p.str_of("type");
        if ty != "Pods" && ty != "Percent" {
            errs.push(FieldError::invalid(
                pp.child("type"),
                json!(ty),
                "must be either Pods or Percent",
            ));
        }
        let v = p.int_of("value").unwrap_or(0);
        if v <= 0 {
            errs.push(FieldError::invalid(
                pp.child("value"),
                json!(v),
                "must be greater than zero",
            ));
        }
        let period = p.int_of("periodSeconds").unwrap_or(0);
        if period <= 0 {
            errs.push(FieldError::invalid(
                pp.child("periodSeconds"),
                json!(period),
                "must be greater than zero",
            ));
        } else if period > 1800 {
            errs.push(FieldError::invalid(
                pp.child("periodSeconds"),
                json!(period),
                "must be less than or equal to 1800",
            ));
        }
    }
    errs
}
