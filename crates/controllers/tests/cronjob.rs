//! CronJob controller against the real in-process API server. Scheduling decisions are
//! covered by the clock-injected unit tests; here: active tracking, lastSuccessfulTime and
//! history cleanup with real Job objects.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Env {
    _server: testkit::TestServer,
    client: kube::Client,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start() -> anyhow::Result<Env> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let stop = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        stop.clone(),
    );
    tokio::spawn(controllers::cronjob::run(Arc::clone(&ctx)));
    Ok(Env {
        _server: server,
        client,
        stop,
    })
}

/// Polls `f` until it yields Some or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn owned_job(
    jobs: &Api<Job>,
    cj: &CronJob,
    name: &str,
    finished_at: Option<&str>,
) -> anyhow::Result<()> {
    let j: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
            "name": cj.name_any(), "uid": cj.uid(), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}
    }))?;
    jobs.create(&PostParams::default(), &j).await?;
    if let Some(t) = finished_at {
        let st = json!({"status": {"startTime": t, "completionTime": t, "succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": t},
            {"type": "Complete", "status": "True", "lastTransitionTime": t}]}});
        jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(st))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_active_and_prunes_history() -> anyhow::Result<()> {
    let env = start().await?;
    let cjs: Api<CronJob> = Api::namespaced(env.client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let cj: CronJob = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "suspend": true, "successfulJobsHistoryLimit": 1,
                 "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "busybox"}]}}}}}
    }))?;
    let cj = cjs.create(&PostParams::default(), &cj).await?;
    owned_job(&jobs, &cj, "nightly-1", Some("2024-01-01T03:00:10Z")).await?;
    owned_job(&jobs, &cj, "nightly-2", Some("2024-01-02T03:00:10Z")).await?;
    owned_job(&jobs, &cj, "running", None).await?;

    let st = eventually("history pruned and active tracked", || {
        let (cjs, jobs) = (cjs.clone(), jobs.clone());
        async move {
            let names: Vec<String> = jobs
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|j| j.name_any())
                .collect();
            let st = cjs.get("nightly").await?.status.unwrap_or_default();
            let active: Vec<String> = st
                .active
                .iter()
                .flatten()
                .filter_map(|r| r.name.clone())
                .collect();
            let done = !names.contains(&"nightly-1".to_string())
                && active == ["running"]
                && st.last_successful_time.is_some();
            Ok(done.then_some((st, names)))
        }
    })
    .await?;
    let (st, mut names) = st;
    names.sort();
    assert_eq!(
        names,
        ["nightly-2", "running"],
        "oldest successful job pruned beyond the limit of 1"
    );
    assert_eq!(
        st.last_successful_time.map(|t| t.0.to_string()).as_deref(),
        Some("2024-01-02T03:00:10Z")
    );
    assert!(
        st.last_schedule_time.is_none(),
        "suspended: nothing scheduled"
    );
    Ok(())
}
