//! Test support shared by the crates' integration tests: a real API server in-process on a
//! temporary data dir, a kube client for it, and condition waits with deadlines.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A running in-process API server (fsync off: tests need speed, not durability) and an
/// admin client of it. Dropping it stops nothing gracefully; call `shutdown` when it matters.
pub struct TestServer {
    pub running: apiserver::Running,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

/// The configuration tests start from: loopback, random port, fast store.
pub fn config(dir: &std::path::Path) -> apiserver::Config {
    apiserver::Config {
        data_dir: dir.to_path_buf(),
        bind: ([127, 0, 0, 1], 0).into(),
        kubeconfig: None,
        tls_sans: vec![],
        store: store::Options {
            fsync: false,
            ..Default::default()
        },
        default_toleration_seconds: 300,
        default_unreachable_toleration_seconds: 300,
        services: Default::default(),
        advertise_address: None,
    }
}

impl TestServer {
    pub async fn start() -> Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test configuration changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut apiserver::Config)) -> Result<TestServer> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let running = apiserver::start(cfg)
            .await
            .context("starting the API server")?;
        let client = client(&running.kubeconfig).await?;
        Ok(TestServer {
            running,
            client,
            dir,
        })
    }

    /// The join token agents use.
    pub fn token(&self) -> &str {
        &self.running.token
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.running.addr)
    }

    pub async fn shutdown(self) -> Result<()> {
        self.running.shutdown().await
    }
}

/// An admin kube client from a kubeconfig file, without client-side retries.
pub async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the kubeconfig")?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    // kube retries 429s by default; tests must see the server's answers as they are (a refused
    // eviction would otherwise stall for minutes).
    cfg.default_retry = false;
    kube::Client::try_from(cfg).context("building the client")
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
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
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
