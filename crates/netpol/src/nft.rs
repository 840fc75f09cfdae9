//! The OS edge: `nft -f -` transactions and the bridge-netfilter check, run in the node's network
//! namespace. [`Backend`] is the seam the sync loop's unit tests replace.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft -f - failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] network::netns::Error),
    #[error("a blocking nft task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where rules go: one `nft -f -` transaction at a time.
pub trait Backend: Send + Sync + 'static {
    /// Applies `script` as one transaction: all of it or nothing.
    fn apply(&self, script: String) -> impl Future<Output = Result<()>> + Send;
}

/// The real backend: the `nft` binary, run in `netns` (or the caller's namespace).
#[derive(Clone, Debug)]
pub struct Nft {
    netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(netns: Option<PathBuf>) -> Nft {
        Nft { netns }
    }

    /// Runs blocking `f` in the namespace: on a fresh thread inside it, or on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.netns {
            Some(path) => network::netns::run_in_async(path, f).await?,
            None => tokio::task::spawn_blocking(f).await?,
        }
    }

    /// `/proc/sys/<key>` as the namespace sees it; `None` when the file does not exist.
    pub async fn sysctl(&self, key: &str) -> Result<Option<String>> {
        let path = format!("/proc/sys/{key}");
        self.run(move || match std::fs::read_to_string(&path) {
            Ok(value) => Ok(Some(value.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read { path, source }),
        })
        .await
    }

    /// Whether the bridge `name` in the namespace has its own `nf_call_iptables` option on
    /// (`ip -d -j link show`); `None` when that cannot be told (no such bridge, no `ip`).
    pub async fn bridge_calls_iptables(&self, name: &str) -> Result<Option<bool>> {
        let name = name.to_owned();
        self.run(move || {
            let out = Command::new("ip")
                .args(["-d", "-j", "link", "show", "dev", &name])
                .stdin(Stdio::null())
                .output();
            let Ok(out) = out else { return Ok(None) };
            if !out.status.success() {
                return Ok(None);
            }
            let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return Ok(None);
            };
            let on = parsed
                .pointer("/0/linkinfo/info_data/nf_call_iptables")
                .and_then(serde_json::Value::as_u64);
            Ok(on.map(|v| v == 1))
        })
        .await
    }
}

impl Backend for Nft {
    async fn apply(&self, script: String) -> Result<()> {
        self.run(move || apply_blocking(&script)).await
    }
}

/// Runs `nft -f -` with `script` on its stdin, in the calling thread's network namespace.
pub(crate) fn apply_blocking(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    // Write from another thread so that neither side can stall on a full pipe.
    let stdin = child.stdin.take();
    let (written, out) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || match stdin {
            Some(mut stdin) => stdin.write_all(script.as_bytes()),
            None => Ok(()),
        });
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let out = out.map_err(Error::Spawn)?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.len() > 4000 {
            let cut = (0..=4000)
                .rev()
                .find(|&i| stderr.is_char_boundary(i))
                .unwrap_or(0);
            stderr.truncate(cut);
            stderr.push_str(" …");
        }
        return Err(Error::Failed {
            status: out.status.to_string(),
            stderr,
        });
    }
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Spawn(e)),
        Err(_) => Err(Error::Spawn(std::io::Error::other(
            "the thread writing the script panicked",
        ))),
    }
}
