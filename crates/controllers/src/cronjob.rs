//! The CronJob controller (upstream `pkg/controller/cronjob`, v2): evaluates the 5-field cron
//! schedule in the CronJob's time zone, creates Jobs named `<cronjob>-<minutes since epoch>`,
//! applies concurrencyPolicy and startingDeadlineSeconds, tracks active Jobs and
//! lastScheduleTime/lastSuccessfulTime, and prunes finished Jobs beyond the history limits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// Annotation on created Jobs with the scheduled time (RFC 3339, in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Above this many missed start times upstream warns instead of enumerating them.
const MAX_MISSED: i64 = 100;

/// Runs the CronJob controller until shutdown.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(controller = "cronjob", "reconcile failed: {e}");
        }
        futures::future::ready(())
    })
    .await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(anyhow::Error);

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error(e.into())
    }
}

fn error_policy(_cj: Arc<CronJob>, err: &Error, _ctx: Arc<crate::Context>) -> Action {
    tracing::debug!(controller = "cronjob", "requeue after error: {err}");
    Action::requeue(Duration::from_secs(5))
}

// ---------------------------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------------------------

/// A parsed standard cron schedule: bit sets of allowed values per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Whether day-of-month / day-of-week were `*` or `?` (robfig's star bit): a star on
    /// either side makes the day match an AND, otherwise the two fields are ORed.
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_value(s: &str, names: &[&str], base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + base);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// Parses one field into a bit set; returns (bits, star).
fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (mut lo, mut hi, mut part_star) = if range == "*" || range == "?" {
            (min, max, true)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                parse_value(a, names, name_base)?,
                parse_value(b, names, name_base)?,
                false,
            )
        } else {
            let v = parse_value(range, names, name_base)?;
            (v, v, false)
        };
        if let Some(s) = step {
            if s == 0 {
                return Err(format!("step of range should be a positive number: {part}"));
            }
            // "N/step" means "N-max/step".
            if !range.contains('-') && range != "*" && range != "?" {
                hi = max;
            }
            if s > 1 {
                part_star = false;
            }
        }
        if lo < min || hi > max || lo > hi {
            // Sunday may be written as 7.
            if names.len() == 7 && hi == 7 && lo <= 7 {
                if lo == 7 {
                    lo = 0;
                    hi = 0;
                } else {
                    bits |= 1;
                    hi = 6;
                }
            } else {
                return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
            }
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
        star |= part_star;
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a standard 5-field schedule or one of the `@` descriptors.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec}",
                f.len()
            ));
        }
        let (minute, _) = parse_field(f[0], 0, 59, &[], 0)?;
        let (hour, _) = parse_field(f[1], 0, 23, &[], 0)?;
        let (dom, dom_star) = parse_field(f[2], 1, 31, &[], 0)?;
        let (month, _) = parse_field(f[3], 1, 12, &MONTHS, 1)?;
        let (dow, dow_star) = parse_field(f[4], 0, 6, &DAYS, 0)?;
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first activation strictly after `after`, evaluated in `after`'s time zone.
    /// Walks civil time field by field (month, day, hour, minute) like robfig/cron; a wall
    /// time skipped by a DST gap resolves forward. None when nothing matches within 5 years.
    pub fn next(&self, after: &Zoned) -> Option<Zoned> {
        let tz = after.time_zone().clone();
        let start = after.datetime().checked_add(1.minute()).ok()?;
        let mut t = DateTime::new(
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
            0,
            0,
        )
        .ok()?;
        let limit = t.year() + 5;
        while t.year() <= limit {
            if self.month & (1 << t.month()) == 0 {
                let first = t.date().first_of_month().checked_add(1.month()).ok()?;
                t = first.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if self.hour & (1 << t.hour()) == 0 {
                t = DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0)
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minute & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let z = t.to_zoned(tz.clone()).ok()?;
            if z.timestamp() > after.timestamp() {
                return Some(z);
            }
            // A DST fold mapped this wall time to the past: keep walking.
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Decision (pure, injected clock)
// ---------------------------------------------------------------------------------------------

/// When the CronJob should have run last (upstream `mostRecentScheduleTime`): the latest
/// activation in (earliest, now], and how many were missed.
pub fn most_recent(sched: &Schedule, earliest: &Zoned, now: &Zoned) -> Option<(Zoned, i64)> {
    let t1 = sched.next(earliest)?;
    if now.timestamp() < t1.timestamp() {
        return None;
    }
    let Some(t2) = sched.next(&t1) else {
        return Some((t1, 1));
    };
    if now.timestamp() < t2.timestamp() {
        return Some((t1, 1));
    }
    let interval = t2
        .timestamp()
        .duration_since(t1.timestamp())
        .as_secs()
        .max(1);
    let elapsed = now.timestamp().duration_since(t1.timestamp()).as_secs();
    let missed = elapsed / interval + 1;
    // Jump close to now using the interval, then walk (exact for irregular schedules too).
    let jump = (missed - 2).max(0) * interval;
    let mut from = t1.checked_add(SignedDuration::from_secs(jump)).ok()?;
    if from.timestamp() > now.timestamp() {
        from = t1.clone();
    }
    let mut recent: Option<Zoned> = None;
    if from.timestamp() <= now.timestamp() && from.timestamp() >= t1.timestamp() {
        recent = Some(from.clone());
    }
    let mut t = sched.next(&from);
    let mut guard = 0;
    while let Some(cur) = t {
        if cur.timestamp() > now.timestamp() || guard > 100_000 {
            break;
        }
        guard += 1;
        t = sched.next(&cur);
        recent = Some(cur);
    }
    recent.map(|r| (r, missed))
}

/// What to do at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing is due; look again at `next`.
    Wait,
    /// Start the Job for `scheduled` (after deleting active Jobs when `replace`).
    Start { scheduled: Zoned, replace: bool },
    /// The schedule was missed by more than startingDeadlineSeconds.
    TooLate { scheduled: Zoned },
    /// concurrencyPolicy Forbid and a Job is still running.
    Forbidden { scheduled: Zoned },
    /// The Job for this time already exists.
    AlreadyStarted,
}

/// The outcome of evaluating a CronJob.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub decision: Decision,
    pub too_many_missed: bool,
    /// The next activation after now, to requeue at.
    pub next: Option<Zoned>,
}

/// Upstream `syncCronJob`'s scheduling decision, for a given clock.
pub fn evaluate(
    cj: &CronJob,
    sched: &Schedule,
    tz: &TimeZone,
    now: Timestamp,
    active: usize,
    existing_jobs: &HashSet<String>,
) -> Evaluation {
    let now_z = now.to_zoned(tz.clone());
    let next = sched.next(&now_z);
    let spec = cj.spec.as_ref();
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map_or(created, |t| t.0);
    let deadline = spec.and_then(|s| s.starting_deadline_seconds);
    if let Some(sds) = deadline {
        let cutoff = now - SignedDuration::from_secs(sds);
        if cutoff > earliest {
            earliest = cutoff;
        }
    }
    let Some((scheduled, missed)) = most_recent(sched, &earliest.to_zoned(tz.clone()), &now_z)
    else {
        return Evaluation {
            decision: Decision::Wait,
            too_many_missed: false,
            next,
        };
    };
    let too_many_missed = missed > MAX_MISSED;
    let decision = if deadline
        .is_some_and(|sds| scheduled.timestamp() + SignedDuration::from_secs(sds) < now)
    {
        Decision::TooLate { scheduled }
    } else if existing_jobs.contains(&job_name(&cj.name_any(), scheduled.timestamp())) {
        Decision::AlreadyStarted
    } else {
        match spec
            .and_then(|s| s.concurrency_policy.as_deref())
            .unwrap_or("Allow")
        {
            "Forbid" if active > 0 => Decision::Forbidden { scheduled },
            "Replace" => Decision::Start {
                scheduled,
                replace: active > 0,
            },
            _ => Decision::Start {
                scheduled,
                replace: false,
            },
        }
    };
    Evaluation {
        decision,
        too_many_missed,
        next,
    }
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

// ---------------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------------

fn job_finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

async fn publish(ctx: &crate::Context, cj: &CronJob, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cj.object_ref(&())).await {
        tracing::debug!(controller = "cronjob", "event not recorded: {e}");
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn requeue_at(next: Option<&Zoned>, now: Timestamp) -> Action {
    match next {
        // A little past the activation so the next sync sees it as due.
        Some(n) => {
            let d = n.timestamp().duration_since(now);
            let d = if d.is_negative() {
                Duration::ZERO
            } else {
                d.unsigned_abs()
            };
            Action::requeue(d + Duration::from_millis(100))
        }
        None => Action::await_change(),
    }
}

async fn delete_job(
    ctx: &crate::Context,
    cj: &CronJob,
    api: &Api<Job>,
    name: &str,
) -> Result<(), Error> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            publish(
                ctx,
                cj,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted job {name}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => {
            publish(
                ctx,
                cj,
                EventType::Warning,
                "FailedDelete",
                format!("Deleted job: {e}"),
            )
            .await;
            Err(e.into())
        }
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<crate::Context>) -> Result<Action, Error> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(uid) = cj.uid() else {
        return Ok(Action::await_change());
    };
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let client = ctx.client.clone();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let cj_api: Api<CronJob> = Api::namespaced(client, &ns);
    let now = Timestamp::now();

    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    let orig_status = cj.status.clone().unwrap_or_default();
    let mut status = orig_status.clone();
    let mut active: Vec<ObjectReference> = status.active.take().unwrap_or_default();

    // Reconcile the active list with the Jobs that exist.
    for j in &jobs {
        let in_active = active.iter().any(|r| r.uid == j.metadata.uid);
        match job_finished(j) {
            None if !in_active => active.push(job_ref(j)),
            Some(cond) if in_active => {
                active.retain(|r| r.uid != j.metadata.uid);
                publish(
                    &ctx,
                    &cj,
                    EventType::Normal,
                    "SawCompletedJob",
                    format!("Saw completed job: {}, condition: {cond}", j.name_any()),
                )
                .await;
            }
            _ => {}
        }
        if job_finished(j) == Some("Complete") {
            let done = j
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| t.0);
            if let Some(done) = done
                && status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| t.0 < done)
            {
                status.last_successful_time = Some(Time(done));
            }
        }
    }
    let existing: HashSet<String> = jobs.iter().map(|j| j.name_any()).collect();
    let before = active.len();
    active.retain(|r| r.name.as_ref().is_some_and(|n| existing.contains(n)));
    if active.len() != before {
        publish(
            &ctx,
            &cj,
            EventType::Normal,
            "MissingJob",
            "Active job went missing".into(),
        )
        .await;
    }

    let mut action = Action::await_change();
    if cj.metadata.deletion_timestamp.is_none() {
        let tz = match spec.time_zone.as_deref() {
            None => TimeZone::system(),
            Some(z) => match TimeZone::get(z) {
                Ok(tz) => tz,
                Err(e) => {
                    publish(
                        &ctx,
                        &cj,
                        EventType::Warning,
                        "UnknownTimeZone",
                        format!("invalid timeZone: {z:?}: {e}"),
                    )
                    .await;
                    write_status(&cj_api, &name, &orig_status, status, active).await?;
                    return Ok(Action::await_change());
                }
            },
        };
        match Schedule::parse(&spec.schedule) {
            Err(e) => {
                publish(
                    &ctx,
                    &cj,
                    EventType::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                )
                .await;
            }
            Ok(_) if spec.suspend == Some(true) => {}
            Ok(sched) => {
                let ev = evaluate(&cj, &sched, &tz, now, active.len(), &existing);
                if ev.too_many_missed {
                    publish(
                        &ctx,
                        &cj,
                        EventType::Warning,
                        "TooManyMissedTimes",
                        "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                    )
                    .await;
                }
                match ev.decision {
                    Decision::TooLate { scheduled } => {
                        publish(
                            &ctx,
                            &cj,
                            EventType::Warning,
                            "MissSchedule",
                            format!(
                                "Missed scheduled time to start a job: {}",
                                scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
                            ),
                        )
                        .await;
                    }
                    Decision::Forbidden { .. } => {
                        tracing::debug!(cronjob = %name, "not starting job: prior execution still running and concurrency policy is Forbid");
                    }
                    Decision::Wait | Decision::AlreadyStarted => {}
                    Decision::Start { scheduled, replace } => {
                        if replace {
                            for r in std::mem::take(&mut active) {
                                if let Some(n) = r.name.as_deref() {
                                    delete_job(&ctx, &cj, &jobs_api, n).await?;
                                }
                            }
                        }
                        let job = job_from_template(&cj, &scheduled)?;
                        match jobs_api.create(&PostParams::default(), &job).await {
                            Ok(created) => {
                                publish(
                                    &ctx,
                                    &cj,
                                    EventType::Normal,
                                    "SuccessfulCreate",
                                    format!("Created job {}", created.name_any()),
                                )
                                .await;
                                active.push(job_ref(&created));
                            }
                            // Someone (an earlier sync of ours) already made it.
                            Err(kube::Error::Api(s)) if s.code == 409 => {}
                            Err(e) => {
                                publish(
                                    &ctx,
                                    &cj,
                                    EventType::Warning,
                                    "FailedCreate",
                                    format!("Error creating job: {e}"),
                                )
                                .await;
                                return Err(e.into());
                            }
                        }
                        status.last_schedule_time = Some(Time(scheduled.timestamp()));
                    }
                }
                action = requeue_at(ev.next.as_ref(), now);
            }
        }
    }
    write_status(&cj_api, &name, &orig_status, status, active).await?;

    // History limits: delete the oldest finished Jobs beyond the limits.
    let ok_limit = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
    let failed_limit = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
    for (kind, limit) in [("Complete", ok_limit), ("Failed", failed_limit)] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(kind))
            .collect();
        if done.len() <= limit {
            continue;
        }
        done.sort_by_key(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .or(j.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        });
        for j in &done[..done.len() - limit] {
            delete_job(&ctx, &cj, &jobs_api, &j.name_any()).await?;
        }
    }
    Ok(action)
}

async fn write_status(
    api: &Api<CronJob>,
    name: &str,
    orig: &CronJobStatus,
    mut status: CronJobStatus,
    active: Vec<ObjectReference>,
) -> Result<(), Error> {
    status.active = (!active.is_empty()).then_some(active);
    if &status != orig {
        // `active: null` must clear the list in a merge patch.
        let mut body = serde_json::to_value(&status).map_err(|e| Error(e.into()))?;
        if let Some(o) = body.as_object_mut() {
            o.entry("active").or_insert(serde_json::Value::Null);
        }
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": body})),
        )
        .await?;
    }
    Ok(())
}

/// The Job for one activation (upstream `getJobFromTemplate2`).
pub fn job_from_template(cj: &CronJob, scheduled: &Zoned) -> Result<Job, Error> {
    let spec = cj
        .spec
        .as_ref()
        .ok_or_else(|| Error(anyhow::anyhow!("cronjob has no spec")))?;
    let tmeta = spec.job_template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled.timestamp())),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name_any(),
                uid: cj.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: spec.job_template.spec.clone(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(s: &str, tz: &str) -> Zoned {
        let dt: DateTime = s.parse().expect("civil datetime");
        dt.in_tz(tz).expect("zone")
    }

    #[test]
    fn next_table() {
        // (schedule, zone, after, expected next)
        let cases = [
            (
                "*/1 * * * *",
                "UTC",
                "2024-01-01T10:00:30",
                "2024-01-01T10:01:00",
            ),
            (
                "*/15 * * * *",
                "UTC",
                "2024-01-01T10:07:00",
                "2024-01-01T10:15:00",
            ),
            (
                "0 * * * *",
                "UTC",
                "2024-01-01T10:00:00",
                "2024-01-01T11:00:00",
            ),
            (
                "@hourly",
                "UTC",
                "2024-01-01T23:30:00",
                "2024-01-02T00:00:00",
            ),
            (
                "@daily",
                "UTC",
                "2024-02-28T12:00:00",
                "2024-02-29T00:00:00",
            ),
            (
                "@weekly",
                "UTC",
                "2024-01-03T00:00:00",
                "2024-01-07T00:00:00",
            ),
            (
                "@monthly",
                "UTC",
                "2024-01-31T00:00:00",
                "2024-02-01T00:00:00",
            ),
            (
                "@yearly",
                "UTC",
                "2024-06-01T00:00:00",
                "2025-01-01T00:00:00",
            ),
            (
                "30 6-16/4 * * 1-5",
                "UTC",
                "2024-01-05T15:00:00",
                "2024-01-08T06:30:00",
            ),
            (
                "0 0 29 2 *",
                "UTC",
                "2024-03-01T00:00:00",
                "2028-02-29T00:00:00",
            ),
            (
                "0 9 * * MON-FRI",
                "UTC",
                "2024-01-06T10:00:00",
                "2024-01-08T09:00:00",
            ),
            (
                "0 0 1 JAN,jul *",
                "UTC",
                "2024-02-01T00:00:00",
                "2024-07-01T00:00:00",
            ),
            (
                "0 0 * * 7",
                "UTC",
                "2024-01-01T00:00:00",
                "2024-01-07T00:00:00",
            ),
            // dom and dow both restricted: either matches (1st of month or a Friday).
            (
                "0 0 1 * 5",
                "UTC",
                "2024-01-01T00:00:00",
                "2024-01-05T00:00:00",
            ),
            // dom restricted, dow star: dom only.
            (
                "0 0 13 * *",
                "UTC",
                "2024-01-01T00:00:00",
                "2024-01-13T00:00:00",
            ),
            // DST gap (02:30 does not exist on 2024-03-10 in New York): resolves forward.
            (
                "30 2 * * *",
                "America/New_York",
                "2024-03-09T03:00:00",
                "2024-03-10T03:30:00",
            ),
            (
                "0 9 * * *",
                "Europe/Berlin",
                "2024-06-01T09:00:00",
                "2024-06-02T09:00:00",
            ),
        ];
        for (spec, tz, after, want) in cases {
            let s = Schedule::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let got = s.next(&z(after, tz)).map(|n| n.datetime());
            let want: DateTime = want.parse().expect("want");
            assert_eq!(got, Some(want), "{spec} after {after} in {tz}");
        }
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "@reboot",
            "a * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    fn cronjob(created: &str, last: Option<&str>, policy: &str, sds: Option<i64>) -> CronJob {
        let v = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "cj", "namespace": "default", "uid": "u", "creationTimestamp": created},
            "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": policy, "startingDeadlineSeconds": sds,
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
            "status": {"lastScheduleTime": last}
        });
        serde_json::from_value(v).expect("cronjob")
    }

    #[test]
    fn evaluate_with_clock() {
        let sched = Schedule::parse("*/1 * * * *").expect("schedule");
        let utc = TimeZone::UTC;
        let t = |s: &str| -> Timestamp { s.parse().expect("timestamp") };
        let none = HashSet::new();
        // Not due yet.
        let cj = cronjob("2024-01-01T10:00:10Z", None, "Allow", None);
        let ev = evaluate(&cj, &sched, &utc, t("2024-01-01T10:00:50Z"), 0, &none);
        assert_eq!(ev.decision, Decision::Wait);
        assert_eq!(
            ev.next.map(|n| n.timestamp()),
            Some(t("2024-01-01T10:01:00Z"))
        );
        // Due: starts the most recent activation.
        let ev = evaluate(&cj, &sched, &utc, t("2024-01-01T10:03:05Z"), 0, &none);
        let Decision::Start {
            scheduled,
            replace: false,
        } = &ev.decision
        else {
            panic!("{ev:?}")
        };
        assert_eq!(scheduled.timestamp(), t("2024-01-01T10:03:00Z"));
        assert_eq!(
            job_name("cj", scheduled.timestamp()),
            format!("cj-{}", t("2024-01-01T10:03:00Z").as_second() / 60)
        );
        assert!(!ev.too_many_missed);
        // Already created.
        let existing: HashSet<String> = [job_name("cj", t("2024-01-01T10:03:00Z"))]
            .into_iter()
            .collect();
        assert_eq!(
            evaluate(&cj, &sched, &utc, t("2024-01-01T10:03:05Z"), 1, &existing).decision,
            Decision::AlreadyStarted
        );
        // Last schedule time respected.
        let cj2 = cronjob(
            "2024-01-01T10:00:10Z",
            Some("2024-01-01T10:03:00Z"),
            "Allow",
            None,
        );
        assert_eq!(
            evaluate(&cj2, &sched, &utc, t("2024-01-01T10:03:30Z"), 0, &none).decision,
            Decision::Wait
        );
        // Forbid with an active job.
        let cj3 = cronjob("2024-01-01T10:00:10Z", None, "Forbid", None);
        assert!(matches!(
            evaluate(&cj3, &sched, &utc, t("2024-01-01T10:01:01Z"), 1, &none).decision,
            Decision::Forbidden { .. }
        ));
        // Replace with an active job.
        let cj4 = cronjob("2024-01-01T10:00:10Z", None, "Replace", None);
        assert!(matches!(
            evaluate(&cj4, &sched, &utc, t("2024-01-01T10:01:01Z"), 1, &none).decision,
            Decision::Start { replace: true, .. }
        ));
        // Too many missed starts without a deadline: warns, still starts the latest.
        let ev = evaluate(&cj, &sched, &utc, t("2024-01-02T10:00:30Z"), 0, &none);
        assert!(ev.too_many_missed);
        let Decision::Start { scheduled, .. } = &ev.decision else {
            panic!("{ev:?}")
        };
        assert_eq!(scheduled.timestamp(), t("2024-01-02T10:00:00Z"));
        // A deadline bounds the look-back: no warning, and a start within it.
        let cj5 = cronjob("2024-01-01T10:00:10Z", None, "Allow", Some(200));
        let ev = evaluate(&cj5, &sched, &utc, t("2024-01-02T10:00:30Z"), 0, &none);
        assert!(!ev.too_many_missed);
        assert!(matches!(ev.decision, Decision::Start { .. }));
        // Deadline of 10s passed for the only activation in range: too late.
        let cj6 = cronjob(
            "2024-01-01T10:00:10Z",
            Some("2024-01-01T10:00:00Z"),
            "Allow",
            Some(10),
        );
        let ev = evaluate(&cj6, &sched, &utc, t("2024-01-01T10:01:20Z"), 0, &none);
        assert_eq!(
            ev.decision,
            Decision::Wait,
            "nothing within the 10s look-back window"
        );
        let cj7 = cronjob(
            "2024-01-01T10:00:10Z",
            Some("2024-01-01T10:00:00Z"),
            "Allow",
            Some(30),
        );
        let ev = evaluate(&cj7, &sched, &utc, t("2024-01-01T10:01:20Z"), 0, &none);
        assert!(matches!(ev.decision, Decision::Start { .. }));
    }

    #[test]
    fn scheduled_annotation_and_name() {
        let cj = cronjob("2024-01-01T10:00:10Z", None, "Allow", None);
        let at = z("2024-01-01T10:03:00", "UTC");
        let job = job_from_template(&cj, &at).expect("job");
        assert_eq!(job.metadata.name.as_deref(), Some("cj-28401723"));
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2024-01-01T10:03:00Z")
        );
        let owner = job.owner_references().first().cloned().expect("owner");
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
        let ny = z("2024-01-01T05:03:00", "America/New_York");
        let job = job_from_template(&cj, &ny).expect("job");
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2024-01-01T05:03:00-05:00")
        );
    }
}
