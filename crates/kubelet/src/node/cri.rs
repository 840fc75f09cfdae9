//! The seam between the kubelet and the container runtime (CRI's role): what the pod workers
//! ask of containers. The real implementation wraps `runtime::container::Runtime` and
//! `runtime::image::ImageStore`; unit tests of the pod logic use a recording fake.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use jiff::Timestamp;

/// Labels the kubelet puts on every container so that, after an agent restart, it can tell
/// whose container it is.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
pub const LABEL_ATTEMPT: &str = "io.kubernetes.container.restartCount";
pub const LABEL_IMAGE_ID: &str = "io.kubernetes.container.imageID";

/// An image ready to run.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// `sha256:<config digest>`.
    pub id: String,
    /// The normalized reference it was found by (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `uid`, `uid:gid`, or names (resolved against the image's /etc/passwd by the runtime).
    pub user: String,
}

/// Why an image could not be had, in upstream's waiting reasons.
#[derive(Debug, Clone)]
pub enum ImageError {
    /// `ErrImagePull` (then `ImagePullBackOff` while backing off).
    Pull(String),
    /// `ErrImageNeverPull`: not present and `imagePullPolicy: Never`.
    NeverPull(String),
    /// `InvalidImageName`.
    InvalidName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Bind { readonly: bool },
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub source: PathBuf,
    pub kind: MountKind,
}

/// Resources in the units cgroups take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub privileged: bool,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub readonly_rootfs: bool,
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    pub no_new_privs: bool,
    /// `RuntimeDefault` unless the pod asks for `Unconfined`.
    pub seccomp_unconfined: bool,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub image: Image,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub netns: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub cgroup_parent: String,
    pub security: Security,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub log_path: PathBuf,
}

/// A container's state as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running {
        pid: u32,
        started_at: Timestamp,
    },
    Exited {
        code: i32,
        oom_killed: bool,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        message: String,
    },
}

/// A container the runtime has, for re-adoption after an agent restart.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub log_path: PathBuf,
}

/// CPU and memory of a container, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_working_set_bytes: u64,
}

/// An error starting a container: the waiting reason upstream reports and its message.
#[derive(Debug, Clone)]
pub struct StartError {
    /// `CreateContainerError`, `RunContainerError`, `StartError`...
    pub reason: &'static str,
    pub message: String,
}

/// The runtime as the pod workers see it. Methods are cheap unless they return a future.
pub trait Cri: Send + Sync + 'static {
    /// Finds the image locally, pulling it as `pull_policy` says (`Always`, `IfNotPresent`,
    /// `Never`), with the pod's pull secrets (`(username, password)` pairs per registry).
    fn ensure_image<'a>(
        &'a self,
        reference: &'a str,
        pull_policy: &'a str,
        auth: &'a [(String, String, String)],
    ) -> BoxFuture<'a, Result<Image, ImageError>>;
    fn start<'a>(&'a self, req: &'a ContainerRequest) -> BoxFuture<'a, Result<State, StartError>>;
    fn state(&self, id: &str) -> Option<State>;
    fn list(&self) -> Vec<Listed>;
    fn signal(&self, id: &str, signal: i32);
    /// Resolves when the container has exited.
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, State>;
    /// Removes an exited (or kills and removes a running) container; idempotent.
    fn remove(&self, id: &str);
    fn stats(&self, id: &str) -> Option<Stats>;
    /// Runs `args` in the container and returns its exit code and combined output (probes
    /// and hooks); gives up after `timeout`.
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<(i32, Vec<u8>), String>>;
}

/// A pod's network sandbox as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub ip: std::net::Ipv4Addr,
}

/// The pod network (the CNI role): one network namespace and address per pod.
pub trait Net: Send + Sync + 'static {
    fn setup<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<Sandbox, String>>;
    fn teardown<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Sandboxes that exist, by pod UID (to remove those of pods that are gone).
    fn list(&self) -> Vec<String>;
}
