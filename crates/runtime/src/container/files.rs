//! The container directory: file names, the records the agent and the shim exchange through
//! it, and the container state derived from them (so it survives agent and shim restarts).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sys::{self, ProcId};
use super::{ContainerSpec, ContainerState, Error, Result, RuntimeKind, io_err};

/// Exit code recorded when the process never started (upstream's StartError code).
pub(crate) const EXIT_NOT_STARTED: i32 = 128;
/// Exit code when the status was lost (the shim died before the container); like containerd.
pub(crate) const EXIT_UNKNOWN: i32 = 255;

#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: impl Into<PathBuf>) -> Paths {
        Paths { dir: dir.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    pub fn oci_config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// youki's state root (it keeps `<id>/state.json` there) or runc's `--root`.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.join("oci")
    }
    pub fn shim(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn started(&self) -> PathBuf {
        self.dir.join("started.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The shim binds it relative to the container directory (its cwd), so only the name.
    pub const ATTACH_SOCK: &'static str = "attach.sock";
    pub fn attach_sock(&self) -> PathBuf {
        self.dir.join(Self::ATTACH_SOCK)
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
}

/// `container.json`: what the agent asked for; the shim's input and the agent's memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerConfig {
    pub spec: ContainerSpec,
    pub kind: RuntimeKind,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct StartedRecord {
    pub process: ProcId,
    pub started_at_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_at_ns: Option<u64>,
    pub finished_at_ns: u64,
    pub message: String,
}

impl ExitRecord {
    pub fn state(&self) -> ContainerState {
        ContainerState::Exited {
            code: self.code,
            signal: self.signal,
            oom_killed: self.oom_killed,
            started_at: self.started_at_ns.map(sys::from_unix_nanos),
            finished_at: sys::from_unix_nanos(self.finished_at_ns),
            message: self.message.clone(),
        }
    }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    sys::write_atomic(path, &data)
}

/// The container's state from its files and the processes they name.
pub(crate) fn state(id: &str, paths: &Paths) -> Result<ContainerState> {
    let read = |p: &Path| io_err(format!("reading {}", p.display()));
    if let Some(exit) = read_json::<ExitRecord>(&paths.exit()).map_err(read(&paths.exit()))? {
        return Ok(exit.state());
    }
    if !paths.config().exists() {
        return Err(Error::NotFound(id.to_string()));
    }
    let started = read_json::<StartedRecord>(&paths.started()).map_err(read(&paths.started()))?;
    let shim = read_json::<ProcId>(&paths.shim()).map_err(read(&paths.shim()))?;
    let shim_alive = shim.is_some_and(|s| s.alive());
    match started {
        Some(s) if s.process.alive() => Ok(ContainerState::Running {
            pid: s.process.pid,
            started_at: sys::from_unix_nanos(s.started_at_ns),
        }),
        // Exited and the shim is writing exit.json: check once more, then report what we know.
        Some(s) if shim_alive => {
            match read_json::<ExitRecord>(&paths.exit()).map_err(read(&paths.exit()))? {
                Some(exit) => Ok(exit.state()),
                None => Ok(ContainerState::Running {
                    pid: s.process.pid,
                    started_at: sys::from_unix_nanos(s.started_at_ns),
                }),
            }
        }
        Some(s) => {
            // The shim is gone without recording an exit (killed); the status is lost.
            match read_json::<ExitRecord>(&paths.exit()).map_err(read(&paths.exit()))? {
                Some(exit) => Ok(exit.state()),
                None => Ok(lost(Some(s.started_at_ns))),
            }
        }
        None if shim_alive || shim.is_none() => Ok(ContainerState::Created),
        None => match read_json::<ExitRecord>(&paths.exit()).map_err(read(&paths.exit()))? {
            Some(exit) => Ok(exit.state()),
            None => Ok(lost(None)),
        },
    }
}

fn lost(started_at_ns: Option<u64>) -> ContainerState {
    ExitRecord {
        code: EXIT_UNKNOWN,
        signal: None,
        oom_killed: false,
        started_at_ns,
        finished_at_ns: sys::to_unix_nanos(std::time::SystemTime::now()),
        message: "the container's shim exited without recording its exit status".into(),
    }
    .state()
}
