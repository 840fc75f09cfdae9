//! The node on real parts: the `Cri` and `Net` seams backed by the `runtime` crate (youki in a
//! shim per container, OCI images) and the `network` crate (a netns and veth per pod on a
//! node-local bridge), the kubelet API's `PodStreams` backed by the same, and `start`, which
//! wires them together for `skiff agent` and the agent embedded in `skiff server`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use jiff::Timestamp;
use runtime::container::{self as rt, ContainerState, Runtime};
use runtime::image::ImageStore;
use tokio_util::sync::CancellationToken;

use super::NodeConfig;
use super::cri::{
    self, ContainerRequest, Cri, Image, ImageError, Listed, Net, Sandbox, StartError, State,
};
use crate::server::{self as ks, PodStreams, StreamError};

/// How the real node runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub cfg: NodeConfig,
    /// The cluster CA: the kubelet API accepts client certificates it signed.
    pub client_ca_pem: String,
    /// An external runc instead of the embedded runtime.
    pub runc: Option<PathBuf>,
}

fn ts(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now())
}

fn state_of(s: &ContainerState) -> Option<State> {
    match s {
        ContainerState::Created => None,
        ContainerState::Running { pid, started_at } => Some(State::Running {
            pid: *pid as u32,
            started_at: ts(*started_at),
        }),
        ContainerState::Exited {
            code,
            oom_killed,
            started_at,
            finished_at,
            message,
            ..
        } => Some(State::Exited {
            code: *code,
            oom_killed: *oom_killed,
            started_at: started_at.map(ts),
            finished_at: ts(*finished_at),
            message: message.clone(),
        }),
    }
}

/// The container runtime and image store behind the `Cri` seam.
pub struct RealCri {
    pub runtime: Arc<Runtime>,
    pub images: Arc<ImageStore>,
}

impl RealCri {
    fn image_of(r: runtime::image::ResolvedImage) -> Image {
        Image {
            id: r.id,
            name: r.name,
            layers: r.layers,
            env: r.config.env,
            entrypoint: r.config.entrypoint,
            cmd: r.config.cmd,
            working_dir: r.config.working_dir,
            user: r.config.user,
        }
    }

    fn spec_of(req: &ContainerRequest) -> rt::ContainerSpec {
        let s = &req.security;
        let user = match (s.run_as_user, s.run_as_group) {
            (None, None) => user_from_image(&req.image),
            (uid, gid) => Some(rt::User {
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
                additional_gids: s.supplemental_groups.clone(),
            }),
        };
        rt::ContainerSpec {
            id: req.id.clone(),
            labels: req.labels.clone(),
            layers: req.image.layers.clone(),
            readonly_rootfs: s.readonly_rootfs,
            args: req.args.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            user,
            hostname: req.hostname.clone(),
            netns: req.netns.clone(),
            mounts: req
                .mounts
                .iter()
                .map(|m| rt::MountSpec {
                    destination: m.destination.clone(),
                    source: m.source.clone(),
                    kind: match m.kind {
                        cri::MountKind::Bind { readonly } => rt::MountKind::Bind { readonly },
                        cri::MountKind::Tmpfs => rt::MountKind::Tmpfs { size: None },
                    },
                })
                .collect(),
            resources: rt::Resources {
                cpu_shares: req.resources.cpu_shares,
                cpu_quota: req.resources.cpu_quota,
                cpu_period: req.resources.cpu_period,
                memory_limit: req.resources.memory_limit,
                pids_limit: None,
            },
            cgroup_parent: req.cgroup_parent.clone(),
            security: rt::Security {
                privileged: s.privileged,
                add_capabilities: s.add_caps.clone(),
                drop_capabilities: s.drop_caps.clone(),
                no_new_privs: s.no_new_privs,
                seccomp: if s.seccomp_unconfined {
                    rt::Seccomp::Unconfined
                } else {
                    rt::Seccomp::RuntimeDefault
                },
            },
            stdin: req.stdin,
            stdin_once: req.stdin_once,
            tty: req.tty,
            log_path: req.log_path.clone(),
            ..Default::default()
        }
    }
}

/// A numeric `USER` of the image (`1000` or `1000:1000`); names are left to the runtime's
/// default (root) — resolving them needs the image's /etc/passwd.
fn user_from_image(image: &Image) -> Option<rt::User> {
    let u = image.user.trim();
    if u.is_empty() {
        return None;
    }
    let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
    let uid: u32 = uid.parse().ok()?;
    let gid: u32 = if gid.is_empty() { 0 } else { gid.parse().ok()? };
    Some(rt::User {
        uid,
        gid,
        additional_gids: vec![],
    })
}

impl Cri for RealCri {
    fn ensure_image<'a>(
        &'a self,
        reference: &'a str,
        pull_policy: &'a str,
        auth: &'a [(String, String, String)],
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(async move {
            let images = self.images.clone();
            let r = reference.to_string();
            let local = tokio::task::spawn_blocking(move || images.resolve(&r))
                .await
                .map_err(|e| ImageError::Pull(e.to_string()))?;
            let local = match local {
                Ok(l) => l,
                Err(runtime::image::Error::InvalidReference { reason, .. }) => {
                    return Err(ImageError::InvalidName(format!(
                        "Failed to apply default image tag \"{reference}\": {reason}"
                    )));
                }
                Err(e) => return Err(ImageError::Pull(e.to_string())),
            };
            match (local, pull_policy) {
                (Some(img), "Never" | "IfNotPresent") => Ok(Self::image_of(img)),
                (None, "Never") => Err(ImageError::NeverPull(format!(
                    "Container image \"{reference}\" is not present with pull policy of Never"
                ))),
                (local, _) => {
                    let registry = reference.split('/').next().unwrap_or_default();
                    let creds = auth.iter().find(|(r, _, _)| {
                        r.trim_start_matches("https://")
                            .trim_start_matches("http://")
                            .trim_end_matches('/')
                            .starts_with(registry)
                    });
                    let auth = creds.map(|(_, u, p)| runtime::image::RegistryAuth {
                        username: u.clone(),
                        password: p.clone(),
                    });
                    match self
                        .images
                        .pull(reference, auth.as_ref(), &mut |_| {})
                        .await
                    {
                        Ok(img) => Ok(Self::image_of(img)),
                        // `Always` with the image present but the registry unreachable: run
                        // what we have (images here are usually imported, not pulled).
                        Err(e) => match local {
                            Some(img) => {
                                tracing::debug!(image = %reference, "pull failed, using the local copy: {e}");
                                Ok(Self::image_of(img))
                            }
                            None => Err(ImageError::Pull(e.to_string())),
                        },
                    }
                }
            }
        })
    }

    fn start<'a>(&'a self, req: &'a ContainerRequest) -> BoxFuture<'a, Result<State, StartError>> {
        Box::pin(async move {
            let spec = Self::spec_of(req);
            match self.runtime.start(&spec).await {
                Ok(info) => Ok(State::Running {
                    pid: info.pid as u32,
                    started_at: ts(info.started_at),
                }),
                Err(e) => {
                    let message = e.to_string();
                    let reason = if message.contains("executable file not found")
                        || message.contains("no such file")
                        || message.contains("permission denied")
                    {
                        "StartError"
                    } else {
                        "CreateContainerError"
                    };
                    // What was created for it must not linger.
                    Cri::remove(self, &req.id);
                    Err(StartError { reason, message })
                }
            }
        })
    }

    fn state(&self, id: &str) -> Option<State> {
        self.runtime.state(id).ok().and_then(|s| state_of(&s))
    }

    fn list(&self) -> Vec<Listed> {
        self.runtime
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, state, labels)| {
                let state = state_of(&state)?;
                Some(Listed {
                    id,
                    labels,
                    state,
                    log_path: PathBuf::new(),
                })
            })
            .collect()
    }

    fn signal(&self, id: &str, signal: i32) {
        if let Ok(sig) = rt::Signal::try_from(signal)
            && let Err(e) = self.runtime.kill(id, sig)
        {
            tracing::debug!(container = %id, "signal {signal}: {e}");
        }
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, State> {
        Box::pin(async move {
            match self.runtime.wait(id).await.ok().and_then(|s| state_of(&s)) {
                Some(s) => s,
                None => State::Exited {
                    code: 137,
                    oom_killed: false,
                    started_at: None,
                    finished_at: Timestamp::now(),
                    message: "the container is gone".into(),
                },
            }
        })
    }

    fn remove(&self, id: &str) {
        // Removing waits for the container to die and its cgroup to empty: keep that off the
        // async workers' backs.
        let remove = || self.runtime.remove(id);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(remove)
            }
            _ => remove(),
        };
        if let Err(e) = result {
            tracing::warn!(container = %id, "removing: {e}");
        }
    }

    fn stats(&self, id: &str) -> Option<cri::Stats> {
        self.runtime.stats(id).ok().map(|s| cri::Stats {
            cpu_usage_ns: s.cpu_usage_ns,
            memory_working_set_bytes: s.memory_working_set_bytes,
        })
    }

    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(i32, Vec<u8>), String>> {
        Box::pin(async move {
            let spec = rt::ExecSpec {
                args: args.to_vec(),
                ..Default::default()
            };
            let run = async {
                let mut p = self
                    .runtime
                    .exec(id, &spec)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                if let Some(mut o) = p.stdout.take() {
                    use tokio::io::AsyncReadExt;
                    let mut buf = Vec::new();
                    let _ = (&mut o).take(64 * 1024).read_to_end(&mut buf).await;
                    out.extend(buf);
                }
                let code = p.wait().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((code, out))
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
            }
        })
    }
}

/// The pod network behind the `Net` seam.
pub struct RealNet {
    pub net: network::PodNetwork,
}

impl Net for RealNet {
    fn setup<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<Sandbox, String>> {
        Box::pin(async move {
            let sb = self.net.setup(pod_uid).await.map_err(|e| e.to_string())?;
            Ok(Sandbox {
                netns: sb.netns,
                ip: sb.ip,
            })
        })
    }

    fn teardown<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.net.teardown(pod_uid).await.map_err(|e| e.to_string()) })
    }

    fn list(&self) -> Vec<String> {
        self.net
            .sandboxes()
            .map(|v| v.into_iter().map(|s| s.id).collect())
            .unwrap_or_default()
    }
}

/// The kubelet API's view of the node: containers found by their labels.
pub struct Streams {
    cri: Arc<RealCri>,
    net: Arc<RealNet>,
    node_name: String,
}

struct Found {
    id: String,
    log_path: Option<PathBuf>,
    state: ContainerState,
}

impl Streams {
    /// The current and the previous run of a container, by its labels.
    fn find(&self, c: &ks::ContainerRef) -> Result<(Option<Found>, Option<Found>), StreamError> {
        let mut runs: Vec<(i32, Found)> = Vec::new();
        let mut pod_seen = false;
        for (id, state, labels) in self
            .cri
            .runtime
            .list()
            .map_err(|e| StreamError::Internal(e.to_string()))?
        {
            let l = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
            if l(cri::LABEL_POD_NAMESPACE) != c.namespace || l(cri::LABEL_POD_NAME) != c.pod {
                continue;
            }
            if let Some(uid) = &c.uid
                && l(cri::LABEL_POD_UID) != uid
            {
                continue;
            }
            pod_seen = true;
            if l(cri::LABEL_CONTAINER) != c.container {
                continue;
            }
            let attempt = l(cri::LABEL_ATTEMPT).parse().unwrap_or(0);
            let log_path = self.cri.runtime.spec(&id).ok().map(|s| s.log_path);
            runs.push((
                attempt,
                Found {
                    id,
                    log_path,
                    state,
                },
            ));
        }
        if runs.is_empty() {
            return Err(if pod_seen {
                StreamError::BadRequest(format!(
                    "container {:?} in pod {:?} is waiting to start: ContainerCreating",
                    c.container, c.pod
                ))
            } else {
                StreamError::NotFound(format!(
                    "pod {:?} not found on node {}",
                    c.pod, self.node_name
                ))
            });
        }
        runs.sort_by_key(|(a, _)| std::cmp::Reverse(*a));
        let mut it = runs.into_iter().map(|(_, f)| f);
        Ok((it.next(), it.next()))
    }

    fn running(&self, c: &ks::ContainerRef) -> Result<Found, StreamError> {
        let (current, _) = self.find(c)?;
        match current {
            Some(f) if f.state.is_running() => Ok(f),
            _ => Err(StreamError::BadRequest(format!(
                "container {} is not running in pod {}",
                c.container, c.pod
            ))),
        }
    }
}

impl PodStreams for Streams {
    fn logs(&self, req: ks::LogRequest) -> BoxFuture<'_, Result<ks::LogStream, StreamError>> {
        Box::pin(async move {
            let (current, previous) = self.find(&req.container)?;
            let f = if req.previous {
                previous.ok_or_else(|| {
                    StreamError::BadRequest(format!(
                        "previous terminated container {:?} in pod {:?} not found",
                        req.container.container, req.container.pod
                    ))
                })?
            } else {
                current.ok_or_else(|| StreamError::BadRequest("no container".into()))?
            };
            let path = f
                .log_path
                .ok_or_else(|| StreamError::Internal("the container has no log".into()))?;
            let opts = rt::logs::LogOptions {
                follow: req.follow && f.state.is_running(),
                tail_lines: req.tail_lines,
                since: req.since.map(SystemTime::from),
                timestamps: req.timestamps,
                limit_bytes: req.limit_bytes,
            };
            let runtime = self.cri.runtime.clone();
            let id = f.id.clone();
            let stop = async move {
                let _ = runtime.wait(&id).await;
            };
            let s = rt::logs::read_logs(path, opts, stop);
            Ok(Box::pin(s) as ks::LogStream)
        })
    }

    fn exec(&self, req: ks::ExecRequest) -> BoxFuture<'_, Result<ks::Session, StreamError>> {
        Box::pin(async move {
            let f = self.running(&req.container)?;
            let spec = rt::ExecSpec {
                args: req.command.clone(),
                tty: req.streams.tty,
                stdin: req.streams.stdin,
                ..Default::default()
            };
            let p = self
                .cri
                .runtime
                .exec(&f.id, &spec)
                .await
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            Ok(session_of_exec(p, req.streams))
        })
    }

    fn attach(&self, req: ks::AttachRequest) -> BoxFuture<'_, Result<ks::Session, StreamError>> {
        Box::pin(async move {
            let f = self.running(&req.container)?;
            let a = self
                .cri
                .runtime
                .attach(&f.id)
                .await
                .map_err(|e| StreamError::BadRequest(e.to_string()))?;
            let runtime = self.cri.runtime.clone();
            let id = f.id.clone();
            let exit = Box::pin(async move {
                match runtime.wait(&id).await {
                    Ok(ContainerState::Exited { code, .. }) => ks::ExitStatus::Exited(code),
                    Ok(_) => ks::ExitStatus::Failed("the container's state is unknown".into()),
                    Err(e) => ks::ExitStatus::Failed(e.to_string()),
                }
            });
            Ok(session_of_attach(a, req.streams, exit))
        })
    }

    fn port_forward(
        &self,
        req: ks::PortForwardRequest,
    ) -> BoxFuture<'_, Result<Box<dyn ks::AsyncReadWrite>, StreamError>> {
        Box::pin(async move {
            let uid = self.pod_uid(&req.namespace, &req.pod, req.uid.as_deref())?;
            let sb = self
                .net
                .net
                .sandboxes()
                .map_err(|e| StreamError::Internal(e.to_string()))?
                .into_iter()
                .find(|s| s.id == uid)
                .ok_or_else(|| {
                    StreamError::BadRequest(format!("pod {} has no network", req.pod))
                })?;
            let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), req.port);
            let s = network::connect_in(&sb.netns, addr, Duration::from_secs(5))
                .await
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            Ok(Box::new(s) as Box<dyn ks::AsyncReadWrite>)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<ks::NodeStats, StreamError>> {
        Box::pin(async move {
            let now = Timestamp::now();
            let mut pods: BTreeMap<String, ks::PodStats> = BTreeMap::new();
            for (id, state, labels) in self
                .cri
                .runtime
                .list()
                .map_err(|e| StreamError::Internal(e.to_string()))?
            {
                if !state.is_running() {
                    continue;
                }
                let Ok(s) = self.cri.runtime.stats(&id) else {
                    continue;
                };
                let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let usage = ks::Usage {
                    time: ts(s.timestamp),
                    cpu_usage_core_nanoseconds: s.cpu_usage_ns,
                    memory_working_set_bytes: s.memory_working_set_bytes,
                };
                let pod = pods
                    .entry(l(cri::LABEL_POD_UID))
                    .or_insert_with(|| ks::PodStats {
                        namespace: l(cri::LABEL_POD_NAMESPACE),
                        name: l(cri::LABEL_POD_NAME),
                        uid: l(cri::LABEL_POD_UID),
                        usage: ks::Usage {
                            time: now,
                            cpu_usage_core_nanoseconds: 0,
                            memory_working_set_bytes: 0,
                        },
                        containers: vec![],
                    });
                pod.usage.cpu_usage_core_nanoseconds += usage.cpu_usage_core_nanoseconds;
                pod.usage.memory_working_set_bytes += usage.memory_working_set_bytes;
                pod.containers.push(ks::ContainerStats {
                    name: l(cri::LABEL_CONTAINER),
                    usage,
                });
            }
            Ok(ks::NodeStats {
                node_name: self.node_name.clone(),
                node: node_usage(now),
                pods: pods.into_values().collect(),
            })
        })
    }
}

impl Streams {
    fn pod_uid(&self, ns: &str, pod: &str, uid: Option<&str>) -> Result<String, StreamError> {
        for (_, _, labels) in self
            .cri
            .runtime
            .list()
            .map_err(|e| StreamError::Internal(e.to_string()))?
        {
            let l = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
            if l(cri::LABEL_POD_NAMESPACE) == ns
                && l(cri::LABEL_POD_NAME) == pod
                && uid.is_none_or(|u| u == l(cri::LABEL_POD_UID))
            {
                return Ok(l(cri::LABEL_POD_UID).to_string());
            }
        }
        Err(StreamError::NotFound(format!(
            "pod {pod:?} not found on node {}",
            self.node_name
        )))
    }
}

/// The whole machine: CPU time from /proc/stat, memory in use (total minus available).
fn node_usage(now: Timestamp) -> ks::Usage {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .enumerate()
                // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
                .filter(|(i, _)| *i != 3 && *i != 4)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    let cpu_ns = ticks * 10_000_000;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    ks::Usage {
        time: now,
        cpu_usage_core_nanoseconds: cpu_ns,
        memory_working_set_bytes: field("MemTotal:").saturating_sub(field("MemAvailable:")),
    }
}

fn session_of_exec(mut p: rt::ExecProcess, flags: ks::StreamFlags) -> ks::Session {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stdin, stdout, stderr, resize);
    if let Some(pty) = p.pty.take() {
        // One task owns the terminal: output out, input in, sizes applied in order.
        let (out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (in_w, in_r) = tokio::io::duplex(64 * 1024);
        let (size_tx, mut size_rx) = tokio::sync::mpsc::channel::<ks::TerminalSize>(4);
        stdout = Some(Box::pin(out_r) as ks::Reader);
        stderr = None;
        stdin = flags.stdin.then(|| Box::pin(in_w) as ks::Writer);
        resize = Some(size_tx);
        tokio::spawn(async move {
            let mut pty = pty;
            let mut out_w = out_w;
            let mut in_r = in_r;
            let mut buf = vec![0u8; 16 * 1024];
            let mut inbuf = vec![0u8; 16 * 1024];
            let mut input_open = flags.stdin;
            loop {
                tokio::select! {
                    n = pty.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if out_w.write_all(&buf[..n]).await.is_err() { break },
                    },
                    n = in_r.read(&mut inbuf), if input_open => match n {
                        Ok(0) | Err(_) => input_open = false,
                        Ok(n) => if pty.write_all(&inbuf[..n]).await.is_err() { input_open = false },
                    },
                    Some(sz) = size_rx.recv() => { let _ = pty.resize(sz.width, sz.height); }
                }
            }
            let _ = out_w.shutdown().await;
        });
    } else {
        stdin = p.stdin.take().map(|w| Box::pin(w) as ks::Writer);
        stdout = p.stdout.take().map(|r| Box::pin(r) as ks::Reader);
        stderr = p.stderr.take().map(|r| Box::pin(r) as ks::Reader);
        resize = None;
    }
    let exit = Box::pin(async move {
        match p.wait().await {
            Ok(code) => ks::ExitStatus::Exited(code),
            Err(e) => ks::ExitStatus::Failed(e.to_string()),
        }
    });
    ks::Session {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    }
}

fn session_of_attach(
    a: rt::AttachStream,
    flags: ks::StreamFlags,
    exit: BoxFuture<'static, ks::ExitStatus>,
) -> ks::Session {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let tty = a.tty;
    let can_stdin = a.stdin;
    let (mut reader, mut writer) = (a.reader, a.writer);
    let (out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (err_w, err_r) = tokio::io::duplex(64 * 1024);
    // The socket's write half must live as long as the session: dropping it shuts the
    // connection down for writing, which the shim takes as the client leaving.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut out_w, mut err_w) = (out_w, err_w);
        while let Ok(Some((which, data))) = reader.recv().await {
            let w = match which {
                rt::Output::Stdout => &mut out_w,
                rt::Output::Stderr => &mut err_w,
            };
            if w.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = out_w.shutdown().await;
        let _ = err_w.shutdown().await;
        let _ = done_tx.send(());
    });
    let (in_w, in_r) = tokio::io::duplex(64 * 1024);
    let (size_tx, mut size_rx) = tokio::sync::mpsc::channel::<ks::TerminalSize>(4);
    let want_stdin = flags.stdin && can_stdin;
    tokio::spawn(async move {
        let mut in_r = in_r;
        let mut buf = vec![0u8; 16 * 1024];
        let mut input_open = want_stdin;
        let mut sizes_open = true;
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                n = in_r.read(&mut buf), if input_open => match n {
                    Ok(0) | Err(_) => {
                        input_open = false;
                        let _ = writer.close_stdin().await;
                    }
                    Ok(n) => if writer.write_stdin(&buf[..n]).await.is_err() { input_open = false },
                },
                sz = size_rx.recv(), if sizes_open => match sz {
                    Some(sz) => { let _ = writer.resize(sz.width, sz.height).await; }
                    None => sizes_open = false,
                },
            }
        }
    });
    ks::Session {
        stdin: want_stdin.then(|| Box::pin(in_w) as ks::Writer),
        stdout: flags.stdout.then(|| Box::pin(out_r) as ks::Reader),
        stderr: (flags.stderr && !tty).then(|| Box::pin(err_r) as ks::Reader),
        resize: tty.then_some(size_tx),
        exit,
    }
}

/// Starts the real node: registers it, opens the image store (importing what waits in the
/// drop folder), the runtime and the pod network, serves the kubelet API and runs the pods.
pub async fn start(client: kube::Client, opts: Options, shutdown: CancellationToken) -> Result<()> {
    let mut cfg = opts.cfg;
    let reg = super::register(&client, &mut cfg).await?;
    let agent = cfg.agent_dir.clone();
    let images = {
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || ImageStore::open(&agent))
            .await?
            .context("opening the image store")?
    };
    let images = Arc::new(images);
    spawn_auto_import(images.clone(), shutdown.clone());
    let kind = match &opts.runc {
        Some(p) => rt::RuntimeKind::Runc(p.clone()),
        None => rt::RuntimeKind::Embedded,
    };
    let shim = rt::ShimCommand::current_exe().context("locating the shim executable")?;
    let runtime = Runtime::new(agent.join("containers"), shim, kind)
        .context("opening the container runtime")?;
    let subnet: network::Ipv4Cidr = reg
        .pod_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("pod CIDR {:?}: {e}", reg.pod_cidr))?;
    let mut bridge = network::BridgeConfig::new(
        subnet,
        agent.join("network"),
        PathBuf::from("/run/skiff")
            .join(&cfg.node_name)
            .join("netns"),
    );
    bridge.bridge = cfg.bridge.clone();
    let net = network::PodNetwork::new(bridge)
        .await
        .context("setting up the pod network")?;
    let cluster_cidr: network::Ipv4Cidr = cfg
        .cluster_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("cluster CIDR {:?}: {e}", cfg.cluster_cidr))?;
    let node_net = network::node::NodeNetwork::prepare(network::node::NodeNetConfig {
        bridge: cfg.bridge.clone(),
        node_ip: cfg.node_ip,
        cluster_cidr,
        cluster_dns: Some(cfg.cluster_dns),
        masquerade_outside: cfg.masquerade_outside,
        backend: cfg.pod_network_backend,
        pod_cidr: subnet,
    })
    .await
    .context("setting up the node's cluster network")?;
    tokio::spawn(super::routes::run(
        client.clone(),
        cfg.node_name.clone(),
        Arc::new(node_net),
        shutdown.clone(),
    ));
    spawn_cluster_services(&client, &cfg, cluster_cidr, &shutdown).await;
    let cri = Arc::new(RealCri {
        runtime: Arc::new(runtime),
        images,
    });
    let net = Arc::new(RealNet { net });
    let streams = Arc::new(Streams {
        cri: cri.clone(),
        net: net.clone(),
        node_name: cfg.node_name.clone(),
    });
    let tls = ks::KubeletTls {
        client_ca_pem: opts.client_ca_pem.clone(),
        serving: None,
    };
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(cfg.node_ip.into(), cfg.kubelet_port))
            .await
            .with_context(|| {
                format!(
                    "listening on {}:{} for the kubelet API",
                    cfg.node_ip, cfg.kubelet_port
                )
            })?;
    cfg.kubelet_port = listener.local_addr()?.port();
    let server = ks::serve(listener, tls, streams, shutdown.clone());
    let server = tokio::spawn(server);
    eprintln!(
        "skiff: node {} is up (pod CIDR {}, kubelet API on {}:{})",
        cfg.node_name, reg.pod_cidr, cfg.node_ip, cfg.kubelet_port
    );
    let result = super::run(client, cfg, reg.machine, cri, net, shutdown).await;
    let _ = server.await;
    result
}

/// The node's share of the cluster network beside its pods: the service proxy, NetworkPolicy
/// enforcement and the cluster DNS on the cluster DNS address. Each runs until `shutdown`; one
/// failing is logged and leaves the others (and the pods) running.
async fn spawn_cluster_services(
    client: &kube::Client,
    cfg: &NodeConfig,
    cluster_cidr: network::Ipv4Cidr,
    shutdown: &CancellationToken,
) {
    let mut pc = proxy::Config::new(cfg.node_name.clone());
    pc.cluster_cidr = Some(proxy::Ipv4Cidr {
        addr: cluster_cidr.network(),
        len: cluster_cidr.prefix_len(),
    });
    let (c, stop) = (client.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = proxy::run(c, pc, stop).await {
            tracing::error!("the service proxy stopped: {e}");
        }
    });
    let mut nc = netpol::Config::new(cfg.node_name.clone());
    nc.bridge = cfg.bridge.clone();
    let (c, stop) = (client.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = netpol::run(c, nc, stop).await {
            tracing::error!("NetworkPolicy enforcement stopped: {e}");
        }
    });
    let dc = dns::Config {
        listen: vec![SocketAddr::new(cfg.cluster_dns.into(), 53)],
        domain: cfg.cluster_domain.clone(),
        ..Default::default()
    };
    match dns::start(client.clone(), dc, shutdown.clone()).await {
        Ok(running) => {
            tokio::spawn(async move {
                if let Err(e) = running.wait().await {
                    tracing::error!("the cluster DNS stopped: {e}");
                }
            });
        }
        // E.g. a second node in the same network namespace (tests): pods still resolve
        // through the first.
        Err(e) => tracing::warn!("not serving the cluster DNS: {e}"),
    }
}

/// Imports tarballs dropped into `<agent>/images/` at start and every 10 s.
fn spawn_auto_import(images: Arc<ImageStore>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let images = images.clone();
            match tokio::task::spawn_blocking(move || images.auto_import()).await {
                Ok(Ok(new)) => {
                    for i in new {
                        tracing::info!(image = ?i.names, "imported from the images folder");
                    }
                }
                Ok(Err(e)) => tracing::warn!("importing from the images folder: {e}"),
                Err(e) => tracing::warn!("importing from the images folder: {e}"),
            }
        }
    });
}
