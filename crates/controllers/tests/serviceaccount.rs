//! ServiceAccount controller against a real in-process API server: every namespace gets a
//! `default` ServiceAccount, recreated when deleted.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Polls `check` until it yields a value or `timeout` passes.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_service_account_in_every_namespace() -> anyhow::Result<()> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();

    let shutdown = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        shutdown.clone(),
    );
    let task = tokio::spawn(controllers::serviceaccount::run(ctx));

    // The system namespaces get one.
    for ns in ["default", "kube-system"] {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually(
            &format!("{ns}/default"),
            Duration::from_secs(15),
            || async { sas.get_opt("default").await.map_err(Into::into) },
        )
        .await?;
    }

    // A new namespace gets one.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a"}}))?,
        )
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    let sa = eventually("team-a/default", Duration::from_secs(15), || async {
        sas.get_opt("default").await.map_err(Into::into)
    })
    .await?;

    // Deleted: recreated.
    sas.delete("default", &DeleteParams::default()).await?;
    eventually(
        "team-a/default recreated",
        Duration::from_secs(15),
        || async {
            Ok(sas
                .get_opt("default")
                .await?
                .filter(|s| s.metadata.uid != sa.metadata.uid)
                .map(|_| ()))
        },
    )
    .await?;

    shutdown.cancel();
    task.await??;
    server.shutdown().await?;
    Ok(())
}
