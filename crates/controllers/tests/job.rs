//! Job controller against the real in-process API server; the test plays the kubelet by
//! patching pod status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
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
    let cfg = controllers::job::Config {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    };
    tokio::spawn(controllers::job::run_with(Arc::clone(&ctx), cfg));
    Ok(Env {
        _server: server,
        client,
        stop,
    })
}

fn job(name: &str, spec: serde_json::Value) -> anyhow::Result<Job> {
    let mut s = json!({
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}
    });
    if let (Some(dst), Some(src)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": s}),
    )?)
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?
        .items)
}

/// Plays the kubelet: the pod terminated with `exit`.
async fn finish(pods: &Api<Pod>, pod: &Pod, exit: i32) -> anyhow::Result<()> {
    let phase = if exit == 0 { "Succeeded" } else { "Failed" };
    let now = jiff::Timestamp::now().to_string();
    let st = json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit, "startedAt": now, "finishedAt": now}}}]}});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(st))
        .await?;
    Ok(())
}

fn has_condition(job: &Job, type_: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_with_parallelism() -> anyhow::Result<()> {
    let env = start().await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("pi", json!({"completions": 5, "parallelism": 2}))?,
    )
    .await?;

    let max_active = Arc::new(AtomicUsize::new(0));
    let done = eventually("job pi complete", || {
        let (jobs, pods, max_active) = (jobs.clone(), pods.clone(), max_active.clone());
        async move {
            let list = job_pods(&pods, "pi").await?;
            let running: Vec<&Pod> = list
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
                .collect();
            max_active.fetch_max(running.len(), Ordering::SeqCst);
            for p in running {
                assert!(
                    p.finalizers()
                        .iter()
                        .any(|f| f == "batch.kubernetes.io/job-tracking"),
                    "tracking finalizer"
                );
                let owner = p.owner_references().first().cloned();
                assert_eq!(owner.as_ref().map(|o| o.kind.as_str()), Some("Job"));
                assert_eq!(owner.and_then(|o| o.controller), Some(true));
                finish(&pods, p, 0).await?;
            }
            let j = jobs.get("pi").await?;
            Ok(has_condition(&j, "Complete").map(|_| j))
        }
    })
    .await?;
    let max_active = max_active.load(Ordering::SeqCst);
    assert!(max_active <= 2, "parallelism exceeded: {max_active}");
    let st = done.status.clone().unwrap_or_default();
    assert_eq!(st.succeeded, Some(5));
    assert_eq!(st.active.unwrap_or(0), 0);
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(
        has_condition(&done, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    assert_eq!(
        has_condition(&done, "Complete").as_deref(),
        Some("CompletionsReached")
    );
    let all = job_pods(&pods, "pi").await?;
    assert_eq!(all.len(), 5, "exactly completions pods were created");
    assert!(
        all.iter().all(|p| p.finalizers().is_empty()),
        "finalizers released"
    );
    let unc = st.uncounted_terminated_pods.unwrap_or_default();
    assert!(
        unc.succeeded.unwrap_or_default().is_empty() && unc.failed.unwrap_or_default().is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_exceeded() -> anyhow::Result<()> {
    let env = start().await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("fail", json!({"backoffLimit": 2}))?,
    )
    .await?;
    let failed = eventually("job fail failed", || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            for p in job_pods(&pods, "fail").await? {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") {
                    finish(&pods, &p, 1).await?;
                }
            }
            let j = jobs.get("fail").await?;
            Ok(has_condition(&j, "Failed").map(|_| j))
        }
    })
    .await?;
    assert_eq!(
        has_condition(&failed, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(
        has_condition(&failed, "FailureTarget").as_deref(),
        Some("BackoffLimitExceeded")
    );
    let st = failed.status.clone().unwrap_or_default();
    assert_eq!(st.failed, Some(3), "backoffLimit 2 allows 3 failures");
    assert!(st.completion_time.is_none());
    assert_eq!(job_pods(&pods, "fail").await?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_completes_indexes() -> anyhow::Result<()> {
    let env = start().await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "idx",
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
        )?,
    )
    .await?;
    let list = eventually("3 indexed pods", || {
        let pods = pods.clone();
        async move {
            let l = job_pods(&pods, "idx").await?;
            Ok((l.len() == 3).then_some(l))
        }
    })
    .await?;
    let mut seen: Vec<String> = Vec::new();
    for p in &list {
        let ix = p
            .annotations()
            .get("batch.kubernetes.io/job-completion-index")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            p.labels().get("batch.kubernetes.io/job-completion-index"),
            Some(&ix)
        );
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.hostname.clone()),
            Some(format!("idx-{ix}"))
        );
        assert!(p.name_any().starts_with(&format!("idx-{ix}-")));
        seen.push(ix);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    // Finish index 1 first: completedIndexes reports it alone.
    let one = list.iter().find(|p| {
        p.annotations()
            .get("batch.kubernetes.io/job-completion-index")
            .map(String::as_str)
            == Some("1")
    });
    finish(&pods, one.ok_or_else(|| anyhow::anyhow!("no index 1"))?, 0).await?;
    eventually("completedIndexes 1", || {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get("idx").await?;
            Ok((j
                .status
                .as_ref()
                .and_then(|s| s.completed_indexes.as_deref())
                == Some("1"))
            .then_some(()))
        }
    })
    .await?;
    for p in &list {
        finish(&pods, p, 0).await?;
    }
    let j = eventually("indexed complete", || {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get("idx").await?;
            Ok(has_condition(&j, "Complete").map(|_| j))
        }
    })
    .await?;
    let st = j.status.unwrap_or_default();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_ttl() -> anyhow::Result<()> {
    let env = start().await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "sus",
            json!({"suspend": true, "ttlSecondsAfterFinished": 0}),
        )?,
    )
    .await?;
    let j = eventually("Suspended condition", || {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get("sus").await?;
            Ok(has_condition(&j, "Suspended").map(|_| j))
        }
    })
    .await?;
    assert_eq!(
        has_condition(&j, "Suspended").as_deref(),
        Some("JobSuspended")
    );
    assert!(
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_none()
    );
    assert!(job_pods(&pods, "sus").await?.is_empty());

    jobs.patch(
        "sus",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await?;
    let pod = eventually("pod after resume", || {
        let pods = pods.clone();
        async move { Ok(job_pods(&pods, "sus").await?.into_iter().next()) }
    })
    .await?;
    finish(&pods, &pod, 0).await?;
    // ttlSecondsAfterFinished: 0 deletes the Job right after it completes.
    eventually("job deleted by TTL", || {
        let jobs = jobs.clone();
        async move { Ok(jobs.get_opt("sus").await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_pod_failure_policy() -> anyhow::Result<()> {
    let env = start().await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    // activeDeadlineSeconds: the running pod is stopped and the Job fails with DeadlineExceeded.
    jobs.create(
        &PostParams::default(),
        &job("slow", json!({"activeDeadlineSeconds": 1}))?,
    )
    .await?;
    // podFailurePolicy FailJob on exit code 42 fails the Job at the first such failure.
    let policy = json!({"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]});
    jobs.create(
        &PostParams::default(),
        &job(
            "pfp",
            json!({"backoffLimit": 6, "podFailurePolicy": policy}),
        )?,
    )
    .await?;
    let pod = eventually("pfp pod", || {
        let pods = pods.clone();
        async move { Ok(job_pods(&pods, "pfp").await?.into_iter().next()) }
    })
    .await?;
    finish(&pods, &pod, 42).await?;
    for (name, reason) in [("slow", "DeadlineExceeded"), ("pfp", "PodFailurePolicy")] {
        let j = eventually(name, || {
            let jobs = jobs.clone();
            async move {
                let j = jobs.get(name).await?;
                Ok(has_condition(&j, "Failed").map(|_| j))
            }
        })
        .await?;
        assert_eq!(
            has_condition(&j, "Failed").as_deref(),
            Some(reason),
            "{name}"
        );
        assert_eq!(j.status.as_ref().and_then(|s| s.active), Some(0), "{name}");
    }
    let j = jobs.get("pfp").await?;
    let msg = j
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.message);
    assert!(msg.is_some_and(|m| m.contains("failed with exit code 42 matching FailJob rule at index 0")));
    Ok(())
}
