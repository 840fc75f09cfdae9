//! [`Runtime`]: the agent's handle on its containers. Stateless apart from the root directory:
//! every answer comes from the container directories and the processes they name, so a
//! restarted agent sees the containers its predecessor started (re-adoption).

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::Stream;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::attach::{self, AttachStream};
use super::cgroup::{self, Hierarchies};
use super::exec::{self, ExecProcess, ExecSpec};
use super::files::{self, ContainerConfig, Paths, StartedRecord};
use super::logs::{self, LogOptions};
use super::shim::{HELLO_WAIT, Report};
use super::sys::{self, ProcId};
use super::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStats, Error, Labels, Result,
    RuntimeKind, ShimCommand, Signal, io_err, rootfs, spec,
};

/// How long `start` waits for the shim's report (youki normally needs tens of ms).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `remove` waits for a killed container and its shim to go away.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Runtime {
    root: PathBuf,
    shim: ShimCommand,
    kind: RuntimeKind,
}

impl Runtime {
    /// `root` holds one directory per container (created 0700 if missing); `shim` is how to
    /// run `skiff shim`; `kind` which OCI runtime the shims drive.
    pub fn new(root: PathBuf, shim: ShimCommand, kind: RuntimeKind) -> Result<Runtime> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !root.is_absolute() {
            return Err(Error::Io {
                context: format!("container root {} is not absolute", root.display()),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_err(format!("creating {}", root.display())))?;
        if let RuntimeKind::Runc(runc) = &kind {
            let meta = fs::metadata(runc).map_err(io_err(format!("runc at {}", runc.display())))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(Error::Io {
                    context: format!("runc at {} is not an executable file", runc.display()),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                });
            }
        }
        Ok(Runtime { root, shim, kind })
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    fn paths(&self, id: &str) -> Result<Paths> {
        validate_id(id)?;
        Ok(Paths::new(self.root.join(id)))
    }

    fn config(&self, id: &str, paths: &Paths) -> Result<ContainerConfig> {
        files::read_json::<ContainerConfig>(&paths.config())
            .map_err(io_err(format!("reading {}", paths.config().display())))?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// The spec the container was started with (for the kubelet after a restart: log path,
    /// stop signal, labels).
    pub fn spec(&self, id: &str) -> Result<ContainerSpec> {
        let paths = self.paths(id)?;
        Ok(self.config(id, &paths)?.spec)
    }

    /// Creates and starts the container; returns once its process runs. On failure the
    /// container stays, `Exited` with code 128 and the message, until `remove`.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        let paths = self.paths(&spec.id)?;
        spec::validate(spec).map_err(|reason| Error::InvalidSpec {
            id: spec.id.clone(),
            reason,
        })?;
        match fs::create_dir(&paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(spec.id.clone()));
            }
            Err(e) => return Err(io_err(format!("creating {}", paths.dir.display()))(e)),
        }
        let cfg = ContainerConfig {
            spec: spec.clone(),
            kind: self.kind.clone(),
        };
        files::write_json(&paths.config(), &cfg)
            .map_err(io_err(format!("writing {}", paths.config().display())))?;
        let launch = tokio::process::Command::new(&self.shim.program)
            .args(&self.shim.args)
            .arg("start")
            .arg(&paths.dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(START_TIMEOUT, launch)
            .await
            .map_err(|_| Error::Shim {
                id: spec.id.clone(),
                message: format!("no start report within {} s", START_TIMEOUT.as_secs()),
            })?
            .map_err(|e| Error::Shim {
                id: spec.id.clone(),
                message: format!("running {}: {e}", self.shim.program.display()),
            })?;
        match serde_json::from_slice::<Report>(&out.stdout) {
            Ok(Report::Started { pid, started_at_ns }) => Ok(ContainerInfo {
                pid,
                started_at: sys::from_unix_nanos(started_at_ns),
            }),
            Ok(Report::Failed { message }) => Err(Error::Start {
                id: spec.id.clone(),
                message,
            }),
            Err(_) => Err(Error::Shim {
                id: spec.id.clone(),
                message: format!(
                    "no report from the shim ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        }
    }

    /// The pid of the container's shim while it runs (for diagnostics and measurements).
    pub fn shim_pid(&self, id: &str) -> Result<Option<i32>> {
        let paths = self.paths(id)?;
        let shim = files::read_json::<ProcId>(&paths.shim())
            .map_err(io_err(format!("reading {}", paths.shim().display())))?;
        Ok(shim.filter(|s| s.alive()).map(|s| s.pid))
    }

    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let paths = self.paths(id)?;
        files::state(id, &paths)
    }

    /// Every container under the root with its state and labels (what a restarted agent
    /// re-adopts).
    pub fn list(&self) -> Result<Vec<(String, ContainerState, Labels)>> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.root).map_err(io_err(format!("listing {}", self.root.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", self.root.display())))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&id).is_err() {
                continue;
            }
            let paths = Paths::new(entry.path());
            // One unreadable directory (being created or removed right now, or damaged) must
            // not hide the others.
            let found = self
                .config(&id, &paths)
                .and_then(|cfg| Ok((cfg, files::state(&id, &paths)?)));
            let (cfg, state) = match found {
                Ok(found) => found,
                Err(Error::NotFound(_)) => continue,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "skipping unreadable container");
                    continue;
                }
            };
            out.push((id, state, cfg.spec.labels));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn started(&self, id: &str, paths: &Paths) -> Result<Option<StartedRecord>> {
        files::read_json::<StartedRecord>(&paths.started())
            .map_err(io_err(format!("reading {}", paths.started().display())))
            .and_then(|s| {
                if s.is_none() && !paths.config().exists() {
                    Err(Error::NotFound(id.to_string()))
                } else {
                    Ok(s)
                }
            })
    }

    /// Sends `signal` to the container's init process. A pid-namespace init only receives
    /// signals it handles (SIGKILL aside), like upstream.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let paths = self.paths(id)?;
        let started = self.started(id, &paths)?;
        match started {
            Some(s) if s.process.alive() => {
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.process.pid), signal) {
                    Ok(()) => Ok(()),
                    Err(nix::errno::Errno::ESRCH) => Err(Error::NotRunning(id.to_string())),
                    Err(e) => Err(io_err(format!("signalling container {id}"))(e.into())),
                }
            }
            _ => Err(Error::NotRunning(id.to_string())),
        }
    }

    /// Waits until the container has exited and returns its final state. No thread is held:
    /// it waits for the shim to close a connection on its socket, or on a pidfd if the shim
    /// is gone.
    pub async fn wait(&self, id: &str) -> Result<ContainerState> {
        let paths = self.paths(id)?;
        loop {
            let state = files::state(id, &paths)?;
            if matches!(state, ContainerState::Exited { .. }) {
                return Ok(state);
            }
            if let Ok(mut s) = attach::connect(&paths.attach_sock()).await
                && s.write_all(&[HELLO_WAIT]).await.is_ok()
            {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                continue;
            }
            // No shim to talk to: wait for the shim process (it may be about to bind its
            // socket) or, when it is dead, for the container's process itself.
            let shim = files::read_json::<ProcId>(&paths.shim()).ok().flatten();
            let started = files::read_json::<StartedRecord>(&paths.started())
                .ok()
                .flatten();
            let target = match (shim, started) {
                (Some(s), _) if s.alive() => Some(s),
                (_, Some(st)) if st.process.alive() => Some(st.process),
                _ => None,
            };
            match target {
                Some(p) if matches!(state, ContainerState::Running { .. }) => wait_exit(p).await?,
                // Created (the shim is still starting it): look again shortly.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Graceful stop: the stop signal, then SIGKILL after `grace`. Returns the final state.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ContainerState> {
        let spec = self.spec(id)?;
        match self.kill(id, spec.stop_signal) {
            Ok(()) | Err(Error::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(state) = tokio::time::timeout(grace, self.wait(id)).await {
            return state;
        }
        match self.kill(id, Signal::SIGKILL) {
            Ok(()) | Err(Error::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        self.wait(id).await
    }

    /// Kills the container if it runs, then removes its rootfs mount, cgroup (and parents it
    /// leaves empty), state and directory. Idempotent. Blocks (up to a few seconds while a
    /// killed container exits): call it from `spawn_blocking` in async code.
    pub fn remove(&self, id: &str) -> Result<()> {
        let paths = self.paths(id)?;
        if !paths.dir.exists() {
            return Ok(());
        }
        let cfg = files::read_json::<ContainerConfig>(&paths.config())
            .ok()
            .flatten();
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        if let Ok(Some(s)) = files::read_json::<StartedRecord>(&paths.started())
            && s.process.alive()
        {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.process.pid), Signal::SIGKILL);
            wait_gone(s.process, deadline);
        }
        if let Ok(Some(shim)) = files::read_json::<ProcId>(&paths.shim())
            && shim.alive()
        {
            // It records the exit and quits once the container's output is drained.
            wait_gone(shim, Instant::now() + Duration::from_secs(3));
            if shim.alive() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid), Signal::SIGKILL);
                wait_gone(shim, deadline);
            }
        }
        let cgroups = Hierarchies::load().map_err(io_err("reading /proc/self/mountinfo"))?;
        if let Some(cfg) = &cfg {
            // Anything left in the cgroup (e.g. an exec'd process whose shim died).
            let cgroup = spec::cgroup_path(&cfg.spec);
            for pid in cgroups.pids(&cgroup) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        rootfs::unmount(&paths)
            .map_err(io_err(format!("unmounting the rootfs of container {id}")))?;
        if let Some(cfg) = &cfg {
            let cgroup = spec::cgroup_path(&cfg.spec);
            let top = top_component(&cfg.spec.cgroup_parent);
            cgroups
                .remove(&cgroup, deadline.saturating_duration_since(Instant::now()))
                .map_err(io_err(format!("removing the cgroup of container {id}")))?;
            let _lock = cgroup::lock_tree(true).map_err(io_err("locking the cgroup tree"))?;
            cgroups
                .remove_empty_parents(&cgroup, &top)
                .map_err(io_err(format!(
                    "removing the parent cgroups of container {id}"
                )))?;
        }
        match fs::remove_dir_all(&paths.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", paths.dir.display()))(e)),
        }
    }

    /// CPU and memory from the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        let paths = self.paths(id)?;
        let cfg = self.config(id, &paths)?;
        let cgroup = spec::cgroup_path(&cfg.spec);
        let h = Hierarchies::load().map_err(io_err("reading /proc/self/mountinfo"))?;
        let read = |what: &str| io_err(format!("reading {what} of cgroup {cgroup}"));
        Ok(ContainerStats {
            cpu_usage_ns: h.cpu_usage_ns(&cgroup).map_err(read("cpu usage"))?,
            memory_working_set_bytes: h
                .memory_working_set(&cgroup)
                .map_err(read("memory usage"))?,
            timestamp: SystemTime::now(),
        })
    }

    /// Runs a process in the running container.
    pub async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess> {
        let paths = self.paths(id)?;
        if !files::state(id, &paths)?.is_running() {
            return Err(Error::NotRunning(id.to_string()));
        }
        exec::spawn(id, &paths.dir, &self.shim, spec).await
    }

    /// Attaches to the running container's stdio through its shim.
    pub async fn attach(&self, id: &str) -> Result<AttachStream> {
        let paths = self.paths(id)?;
        let cfg = self.config(id, &paths)?;
        if !files::state(id, &paths)?.is_running() {
            return Err(Error::NotRunning(id.to_string()));
        }
        AttachStream::connect(&paths.attach_sock(), cfg.spec.tty, cfg.spec.stdin)
            .await
            .map_err(io_err(format!("attaching to container {id}")))
    }

    /// The container's log as `kubectl logs` shows it; with `follow`, until it exits.
    pub fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + use<>> {
        let spec = self.spec(id)?;
        let rt = self.clone();
        let id = id.to_string();
        Ok(logs::read_logs(spec.log_path, opts, async move {
            let _ = rt.wait(&id).await;
        }))
    }
}

/// Ids name directories and cgroups: what youki and runc accept, bounded in length.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// `/skiff/pod1` -> `/skiff`: the highest cgroup `remove` may delete when empty.
fn top_component(parent: &str) -> String {
    let first = parent
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    format!("/{first}")
}

/// Blocks until `p` has exited or `deadline` passes.
fn wait_gone(p: ProcId, deadline: Instant) {
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (without a thread) until process `p` exits, via a pidfd.
async fn wait_exit(p: ProcId) -> Result<()> {
    let Some(fd) = sys::pidfd_open(p).map_err(io_err(format!("pidfd of pid {}", p.pid)))? else {
        return Ok(());
    };
    #[allow(unsafe_code)]
    // SAFETY: an OwnedFd is open for as long as it is owned and always returns the same fd.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| io_err(format!("pidfd of pid {}", p.pid))(io::Error::other(e.to_string())))?;
    let _ = fd
        .readable()
        .await
        .map_err(io_err(format!("waiting for pid {}", p.pid)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "pod-1_web.0+x", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", &"x".repeat(129), "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert_eq!(top_component("/skiff/pod1"), "/skiff");
        assert_eq!(top_component("/skiff"), "/skiff");
    }
}
