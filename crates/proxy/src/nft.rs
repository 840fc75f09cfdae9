//! Running the `nft` binary: a script on stdin is one atomic transaction (`nft -f -`), so a
//! failed sync leaves the table as it was.

use std::ffi::OsString;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {argv}: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the script to {argv}: {source}")]
    Write {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{argv} failed ({status}) on a {lines}-line script: {stderr}")]
    Failed {
        argv: String,
        status: std::process::ExitStatus,
        lines: usize,
        stderr: String,
    },
}

/// How `nft` is started: plain `nft` in production (the current network namespace); tests
/// and benches prefix it, e.g. `ip netns exec NS nft`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nft {
    argv: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            argv: vec!["nft".into()],
        }
    }
}

/// nft's error output can repeat the whole failing line for every problem; keep the start.
const MAX_STDERR: usize = 2000;

impl Nft {
    /// `program args...` is run with `-f -` appended.
    pub fn new(
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Nft {
        let mut argv = vec![program.into()];
        argv.extend(args.into_iter().map(Into::into));
        Nft { argv }
    }

    /// `ip netns exec NAME nft`: nft inside the named namespace (`ip netns add NAME`).
    pub fn in_netns(name: &str) -> Nft {
        Nft::new("ip", ["netns", "exec", name, "nft"])
    }

    fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).args(args);
        cmd
    }

    fn failed(&self, out: &std::process::Output, script: &str) -> Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut stderr = stderr.trim().to_string();
        if stderr.len() > MAX_STDERR {
            let cut = (0..=MAX_STDERR)
                .rev()
                .find(|i| stderr.is_char_boundary(*i))
                .unwrap_or(0);
            stderr.truncate(cut);
            stderr.push_str(" ...");
        }
        Error::Failed {
            argv: self.describe(),
            status: out.status,
            lines: script.lines().count(),
            stderr,
        }
    }

    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<()> {
        let argv = self.describe();
        let mut child = tokio::process::Command::from(self.command(&["-f", "-"]))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                argv: argv.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().ok_or_else(|| Error::Write {
            argv: argv.clone(),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        let written = async {
            stdin.write_all(script.as_bytes()).await?;
            stdin.shutdown().await
        }
        .await;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| Error::Spawn {
                argv: argv.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(self.failed(&out, script));
        }
        written.map_err(|source| Error::Write { argv, source })
    }

    /// Applies `script` without an async runtime (cleanup, tests).
    pub fn apply_blocking(&self, script: &str) -> Result<()> {
        use std::io::Write as _;
        let argv = self.describe();
        let mut child = self
            .command(&["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                argv: argv.clone(),
                source,
            })?;
        let written = child
            .stdin
            .take()
            .map(|mut s| s.write_all(script.as_bytes()))
            .unwrap_or(Ok(()));
        let out = child.wait_with_output().map_err(|source| Error::Spawn {
            argv: argv.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(self.failed(&out, script));
        }
        written.map_err(|source| Error::Write { argv, source })
    }

    /// `nft ARGS` (e.g. `list table ip T`), returning stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let argv = self.describe();
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn { argv, source })?;
        if !out.status.success() {
            return Err(self.failed(&out, ""));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Deletes `ip TABLE` if it exists (one transaction: add, then delete).
    pub fn delete_table(&self, table: &str) -> Result<()> {
        self.apply_blocking(&format!("add table ip {table}\ndelete table ip {table}\n"))
    }
}
