//! Containers: OCI spec with secure defaults, the shim process, lifecycle, exec, logs.
//!
//! The agent never creates a container in its own process: youki's `libcontainer` forks with a
//! raw `clone3` and reaps with `waitpid`, which is unsound on a tokio worker. Instead
//! [`Runtime::start`] writes the container's spec into its directory and runs the shim (the
//! agent's own binary re-executed as `skiff shim start <dir>`), which detaches (`setsid`, double
//! fork, so the agent never reaps it and `kill -9` of the agent leaves it alone), mounts the
//! rootfs, writes the OCI bundle, creates the container (youki in-process, or `runc`), holds its
//! stdio and CRI log file, serves attach on a unix socket, reaps the container and records the
//! exit in a file. Everything the agent needs after a restart is in the directory:
//!
//! ```text
//! <root>/<id>/container.json   the ContainerSpec and runtime kind (written by the agent)
//!             config.json      the OCI runtime spec (the bundle is the directory itself)
//!             rootfs/          overlay mount: image layers as lowerdirs, upper/ and work/
//!             shim.json        shim pid + start time   started.json  container pid + times
//!             exit.json        exit code, signal, OOM kill, finish time (written once)
//!             attach.sock      the shim's socket: attach (output, stdin, resize) and wait
//! ```
//!
//! `exec` runs a second short-lived shim (`skiff shim exec <dir>`) per process, for the same
//! reason; it passes the agent's pipes (or a pty master) straight to the new process.

mod attach;
mod backend;
mod cgroup;
mod exec;
mod files;
pub mod logs;
mod rootfs;
mod runtime;
mod seccomp;
mod shim;
mod spec;
mod sys;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use attach::{AttachReader, AttachStream, AttachWriter, Output};
pub use exec::{ExecProcess, ExecSpec, Pty};
pub use nix::sys::signal::Signal;
pub use runtime::Runtime;

/// What failed, and with which container or input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {0:?}: use 1-128 letters, digits, '_', '+', '-' or '.'")]
    InvalidId(String),
    #[error("invalid spec for container {id}: {reason}")]
    InvalidSpec { id: String, reason: String },
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container could not be created or its process not started; `message` reads like
    /// upstream's (e.g. `exec: "foo": executable file not found in $PATH`) so the kubelet can
    /// put it into a StartError / CreateContainerError status.
    #[error("failed to start container {id}: {message}")]
    Start { id: String, message: String },
    #[error("failed to exec in container {id}: {message}")]
    Exec { id: String, message: String },
    #[error("shim of container {id}: {message}")]
    Shim { id: String, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A container's labels (kept for the kubelet, e.g. pod and container names).
pub type Labels = BTreeMap<String, String>;

/// How to run the shim: the agent's own executable and the arguments before `start|exec`,
/// e.g. `/usr/bin/skiff` and `["shim"]`.
#[derive(Clone, Debug)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl ShimCommand {
    /// This executable with the leading argument `shim` (what `skiff` dispatches on).
    pub fn current_exe() -> Result<ShimCommand> {
        let program = std::env::current_exe().map_err(io_err("finding the current executable"))?;
        Ok(ShimCommand {
            program,
            args: vec!["shim".into()],
        })
    }
}

/// Which OCI runtime the shim drives. Both run the same bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeKind {
    /// youki's libcontainer inside the shim process.
    Embedded,
    /// An external `runc` binary, e.g. `/usr/sbin/runc`.
    Runc(PathBuf),
}

/// Everything needed to create and start one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// Unpacked image layers, bottom first; mounted read-only as overlay lowerdirs.
    pub layers: Vec<PathBuf>,
    pub readonly_rootfs: bool,
    pub args: Vec<String>,
    /// `NAME=value`; `PATH` gets upstream's default when missing, `HOSTNAME` the hostname.
    pub env: Vec<String>,
    /// Working directory inside the container; empty means `/`.
    pub cwd: String,
    pub user: Option<User>,
    pub hostname: String,
    /// Join this network namespace; `None` gives the container a new, empty one.
    pub netns: Option<PathBuf>,
    pub mounts: Vec<MountSpec>,
    pub resources: Resources,
    /// Parent cgroup path, e.g. `/skiff/pod<uid>`; the container's cgroup is `<parent>/<id>`.
    /// Missing parents are created; `remove` deletes parents it leaves empty.
    pub cgroup_parent: String,
    pub security: Security,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The CRI-format log file the shim writes (parent directories are created).
    pub log_path: PathBuf,
    pub log_rotation: LogRotation,
    #[serde(with = "signal_number")]
    pub stop_signal: Signal,
    /// `/proc/<pid>/oom_score_adj` of the container's processes (the kubelet's QoS policy).
    pub oom_score_adj: Option<i32>,
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            id: String::new(),
            labels: BTreeMap::new(),
            layers: Vec::new(),
            readonly_rootfs: false,
            args: Vec::new(),
            env: Vec::new(),
            cwd: String::new(),
            user: None,
            hostname: String::new(),
            netns: None,
            mounts: Vec::new(),
            resources: Resources::default(),
            cgroup_parent: "/skiff".into(),
            security: Security::default(),
            stdin: false,
            stdin_once: false,
            tty: false,
            log_path: PathBuf::new(),
            log_rotation: LogRotation::default(),
            stop_signal: Signal::SIGTERM,
            oom_score_adj: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// Host path for bind mounts; ignored for tmpfs.
    pub source: PathBuf,
    pub kind: MountKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    Bind {
        readonly: bool,
    },
    /// A private tmpfs; `size` in bytes (`None`: the kernel's default, half of RAM).
    Tmpfs {
        size: Option<u64>,
    },
}

/// cgroup limits; `None` leaves the kernel's default (unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Lifts the defaults like upstream: all capabilities, every device, no seccomp, no masked
    /// or read-only paths, writable /sys.
    pub privileged: bool,
    /// Capability names with or without `CAP_` (`NET_ADMIN`, `CAP_SYS_TIME`) or `ALL`.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub seccomp: Seccomp,
}

impl Default for Security {
    /// The secure defaults: containerd's capabilities, no_new_privs, RuntimeDefault seccomp.
    fn default() -> Self {
        Security {
            privileged: false,
            add_capabilities: Vec::new(),
            drop_capabilities: Vec::new(),
            no_new_privs: true,
            seccomp: Seccomp::RuntimeDefault,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// skiff's default profile (see `seccomp.rs`): dangerous syscalls fail with EPERM.
    RuntimeDefault,
    Unconfined,
}

/// Size-based rotation of the CRI log (the kubelet's containerLogMaxSize / MaxFiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    pub max_size: u64,
    /// Files kept, the live one included (at least 1).
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// What [`Runtime::start`] returns once the container's process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub pid: i32,
    pub started_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// The directory exists but the process has not started (yet, or the shim is starting it).
    Created,
    Running {
        pid: i32,
        started_at: SystemTime,
    },
    Exited {
        /// The exit code, or 128 + the signal number.
        code: i32,
        signal: Option<i32>,
        oom_killed: bool,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
        /// Why it did not start or why the status is unknown; empty after a normal exit.
        message: String,
    },
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running { .. })
    }
}

/// Usage from the container's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerStats {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory usage minus inactive file pages (cAdvisor's working set).
    pub memory_working_set_bytes: u64,
    pub timestamp: SystemTime,
}

/// Entry point of `skiff shim …`: a per-container shim (`start <dir>`) or a per-exec shim
/// (`exec <dir>`). Must run before any thread or async runtime exists in the process.
pub fn shim_main(args: Vec<OsString>) -> ExitCode {
    let mode = args.first().and_then(|a| a.to_str());
    let dir = args.get(1).map(PathBuf::from);
    match (mode, dir, args.len()) {
        (Some("start"), Some(dir), 2) => shim::launch(&dir),
        (Some("exec"), Some(dir), 2) => exec::exec_shim(&dir),
        (Some("monitor"), Some(dir), 3) => match args[2].to_str() {
            Some(handoff) => shim::monitor(&dir, handoff),
            None => ExitCode::from(2),
        },
        _ => {
            eprintln!("skiff shim: usage: skiff shim start|exec <container-dir>");
            ExitCode::from(2)
        }
    }
}

mod signal_number {
    use super::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(*sig as i32)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(d)?;
        Signal::try_from(n).map_err(|_| serde::de::Error::custom(format!("no signal {n}")))
    }
}
