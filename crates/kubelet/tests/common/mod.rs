//! Shared test helpers: a real API server in a temp dir, and waiting with deadlines.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

pub struct Server {
    pub running: apiserver::Running,
    pub url: String,
    _dir: tempfile::TempDir,
}

pub async fn start() -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let running = apiserver::start(apiserver::Config {
        data_dir: dir.path().into(),
        bind: "127.0.0.1:0".parse()?,
        kubeconfig: None,
        tls_sans: vec![],
        store: store::Options {
            fsync: false,
            ..Default::default()
        },
        default_toleration_seconds: 300,
        default_unreachable_toleration_seconds: 300,
    })
    .await?;
    let url = format!("https://{}", running.addr);
    Ok(Server {
        running,
        url,
        _dir: dir,
    })
}

/// Polls `check` until it yields a value or `timeout` passes; the error names `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
