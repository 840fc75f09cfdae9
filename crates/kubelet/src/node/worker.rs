//! One task per pod bound to this node (upstream's pod worker): level-triggered syncs that
//! bring the pod's sandbox, volumes and containers to what the spec asks, restart containers
//! with upstream's CrashLoopBackOff, act on probe verdicts, report status, and on deletion run
//! preStop hooks, stop containers within the grace period, clean up and finish the deletion.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::NodeConfig;
use super::cri::{self, ContainerRequest, Cri, ImageError, Mount, MountKind, Net, State};
use super::events::Events;
use super::probes::{self, Kind, ProbeTask, Verdict};
use super::spec::{self, Sources};
use super::status::{self, ContainerView, Instance, Phase, PodView};
use super::volumes::{self, VolumeError};
use crate::join::sha256_hex;
use crate::simulated::status::{normalize_image, qos_class};

/// Upstream's CrashLoopBackOff: 10 s doubling to 5 min, reset after 10 min of running.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a pod is re-synced without any event (config map and secret volumes refresh).
const RESYNC: Duration = Duration::from_secs(10);

/// What wakes a worker besides pod updates.
#[derive(Debug)]
pub enum Msg {
    Exited { container: String, instance: String },
    Probe(Verdict),
}

/// Shared by all workers.
pub struct Shared {
    pub client: kube::Client,
    pub cri: Arc<dyn Cri>,
    pub net: Arc<dyn Net>,
    pub cfg: Arc<NodeConfig>,
    pub events: Events,
}

/// One container of the pod as the worker tracks it.
struct Tracked {
    spec: Container,
    init: bool,
    sidecar: bool,
    view: ContainerView,
    /// Backoff before the next restart and when it ends.
    backoff: Duration,
    restart_at: Option<Instant>,
    probes: Option<CancellationToken>,
    /// `ErrImagePull` etc.: until when not to retry.
    image_retry_at: Option<Instant>,
    /// Set once this run's liveness/startup probe failed (the kill is in progress).
    killing: bool,
}

pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    pod: Arc<Pod>,
    pod_rx: watch::Receiver<Option<Arc<Pod>>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    containers: Vec<Tracked>,
    sandbox: Option<cri::Sandbox>,
    sandbox_error: Option<String>,
    volume_error: Option<VolumeError>,
    volumes: HashMap<String, volumes::Prepared>,
    /// Host directories of the pod's persistent volume claims, once resolved.
    claims: HashMap<String, PathBuf>,
    start_time: Timestamp,
    transitions: HashMap<&'static str, (bool, Timestamp)>,
    last_patch: Option<Value>,
    terminal: Option<Phase>,
    cleaned: bool,
    waiters: HashMap<String, tokio::task::JoinHandle<()>>,
}

fn pod_dir(cfg: &NodeConfig, uid: &str) -> PathBuf {
    cfg.agent_dir.join("pods").join(uid)
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        pod: Arc<Pod>,
        pod_rx: watch::Receiver<Option<Arc<Pod>>>,
    ) -> Worker {
        let (tx, rx) = mpsc::unbounded_channel();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            containers.push(Tracked::new(c.clone(), true));
        }
        for c in &spec.containers {
            containers.push(Tracked::new(c.clone(), false));
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        Worker {
            shared,
            uid,
            pod,
            pod_rx,
            tx,
            rx,
            containers,
            sandbox: None,
            sandbox_error: None,
            volume_error: None,
            volumes: HashMap::new(),
            claims: HashMap::new(),
            start_time,
            transitions: HashMap::new(),
            last_patch: None,
            terminal: None,
            cleaned: false,
            waiters: HashMap::new(),
        }
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Picks up the containers this pod already has (`existing`, found by the manager when the
    /// agent started): the newest run of each becomes current, the one before it previous;
    /// restart counts come from their labels.
    fn adopt(&mut self, existing: Vec<cri::Listed>) {
        let mut runs: BTreeMap<String, Vec<(i32, cri::Listed)>> = BTreeMap::new();
        for l in existing {
            if l.labels.get(cri::LABEL_POD_UID) != Some(&self.uid) {
                continue;
            }
            let Some(name) = l.labels.get(cri::LABEL_CONTAINER).cloned() else {
                continue;
            };
            let attempt = l
                .labels
                .get(cri::LABEL_ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            runs.entry(name).or_default().push((attempt, l));
        }
        for (name, mut list) in runs {
            list.sort_by_key(|(a, _)| std::cmp::Reverse(*a));
            let Some(t) = self.containers.iter_mut().find(|t| t.spec.name == name) else {
                // A container the spec no longer has: remove it.
                for (_, l) in list {
                    self.shared.cri.remove(&l.id);
                }
                continue;
            };
            let mut it = list.into_iter();
            if let Some((attempt, cur)) = it.next() {
                t.view.restart_count = attempt;
                if let Some(img) = cur.labels.get(cri::LABEL_IMAGE_ID) {
                    t.view.image_id = img.clone();
                }
                let running = matches!(cur.state, State::Running { .. });
                t.view.current = Some(Instance {
                    id: cur.id.clone(),
                    state: cur.state,
                });
                // Without probes, a re-adopted running container is started and ready.
                if running {
                    t.view.started = t.spec.startup_probe.is_none();
                    t.view.ready = t.spec.readiness_probe.is_none();
                }
            }
            if let Some((_, prev)) = it.next() {
                t.view.previous = Some(Instance {
                    id: prev.id,
                    state: prev.state,
                });
            }
            for (_, older) in it {
                self.shared.cri.remove(&older.id);
            }
        }
        let running: Vec<(String, String)> = self
            .containers
            .iter()
            .filter(|t| t.view.running())
            .filter_map(|t| Some((t.spec.name.clone(), t.view.current.as_ref()?.id.clone())))
            .collect();
        for (name, id) in running {
            self.watch_exit(&name, &id);
        }
    }

    /// Runs the pod until it is deleted (or the agent shuts down), first adopting `existing`
    /// containers of this pod.
    pub async fn run(mut self, existing: Vec<cri::Listed>, shutdown: CancellationToken) {
        self.adopt(existing);
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.sync().await;
            if self.cleaned {
                return;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Containers outlive the agent: stop probes, leave everything running.
                    for t in &self.containers {
                        if let Some(p) = &t.probes { p.cancel(); }
                    }
                    for (_, w) in self.waiters.drain() { w.abort(); }
                    return;
                }
                changed = self.pod_rx.changed() => {
                    if changed.is_err() {
                        // The manager dropped us: treat as removed.
                        self.pod = Arc::new(Pod { metadata: self.pod.metadata.clone(), ..Default::default() });
                        self.force_remove().await;
                        return;
                    }
                    let latest = self.pod_rx.borrow_and_update().clone();
                    match latest {
                        Some(p) => self.pod = p,
                        None => {
                            // Gone from the API (force-deleted): stop at once and clean up.
                            self.force_remove().await;
                            return;
                        }
                    }
                }
                Some(msg) = self.rx.recv() => self.handle(msg),
                _ = sleep => {}
                _ = resync.tick() => {}
            }
            // Drain whatever else arrived so one sync covers it all.
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Exited {
                container,
                instance,
            } => {
                if let Some(t) = self.tracked(&container)
                    && t.view.current.as_ref().is_some_and(|i| i.id == instance)
                {
                    let state = self.shared.cri.state(&instance);
                    let t = self.tracked(&container).expect("checked above");
                    if let Some(state) = state {
                        t.view.current = Some(Instance {
                            id: instance.clone(),
                            state,
                        });
                    }
                    if let Some(p) = t.probes.take() {
                        p.cancel();
                    }
                    t.view.ready = false;
                    t.view.started = false;
                }
                self.waiters.remove(&instance);
            }
            Msg::Probe(v) => self.on_probe(v),
        }
    }

    fn tracked(&mut self, name: &str) -> Option<&mut Tracked> {
        self.containers.iter_mut().find(|t| t.spec.name == name)
    }

    fn on_probe(&mut self, v: Verdict) {
        let (pod, ns) = (self.name().to_string(), self.namespace().to_string());
        let events = self.shared.events.clone();
        let pod_ref = self.pod.clone();
        let cri = self.shared.cri.clone();
        let Some(t) = self.tracked(&v.container) else {
            return;
        };
        if t.view.current.as_ref().map(|i| i.id.as_str()) != Some(v.instance.as_str()) {
            return;
        }
        match (v.kind, v.ok) {
            (Kind::Readiness, ok) => {
                t.view.ready = ok;
                if !ok {
                    events.warn(
                        &pod_ref,
                        "Unhealthy",
                        format!("Readiness probe failed: {}", v.message),
                    );
                }
            }
            (Kind::Startup, true) => {
                t.view.started = true;
                let spec = t.spec.clone();
                let instance = v.instance.clone();
                // Liveness and readiness start once the startup probe succeeded.
                self.start_probes(&spec.name, &instance, false);
            }
            (kind, false) => {
                if t.killing {
                    return;
                }
                t.killing = true;
                let what = if kind == Kind::Liveness {
                    "liveness"
                } else {
                    "startup"
                };
                events.warn(
                    &pod_ref,
                    "Unhealthy",
                    format!("{} probe failed: {}", kind.name(), v.message),
                );
                events.normal(
                    &pod_ref,
                    "Killing",
                    format!(
                        "Container {} failed {what} probe, will be restarted",
                        v.container
                    ),
                );
                let grace = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30);
                let id = v.instance.clone();
                tracing::info!(pod = %format!("{ns}/{pod}"), container = %v.container, "{what} probe failed; restarting");
                tokio::spawn(async move {
                    stop_container(cri.as_ref(), &id, Duration::from_secs(grace.max(0) as u64))
                        .await;
                });
            }
            (Kind::Liveness, true) => {}
        }
    }

    fn watch_exit(&mut self, container: &str, id: &str) {
        let cri = self.shared.cri.clone();
        let tx = self.tx.clone();
        let (container, id) = (container.to_string(), id.to_string());
        let key = id.clone();
        let h = tokio::spawn(async move {
            cri.wait(&id).await;
            let _ = tx.send(Msg::Exited {
                container,
                instance: id,
            });
        });
        self.waiters.insert(key, h);
    }

    fn start_probes(&mut self, name: &str, instance: &str, first: bool) {
        let Some(ip) = self.sandbox.as_ref().map(|s| IpAddr::V4(s.ip)) else {
            return;
        };
        let cri = self.shared.cri.clone();
        let tx = self.tx.clone();
        let Some(t) = self.tracked(name) else { return };
        let stop = t.probes.get_or_insert_with(CancellationToken::new).clone();
        let mut kinds = Vec::new();
        if first && t.spec.startup_probe.is_some() {
            kinds.push((Kind::Startup, t.spec.startup_probe.clone()));
        } else {
            if first || !t.view.started {
                t.view.started = true;
            }
            kinds.push((Kind::Liveness, t.spec.liveness_probe.clone()));
            kinds.push((Kind::Readiness, t.spec.readiness_probe.clone()));
            if t.spec.readiness_probe.is_none() {
                t.view.ready = true;
            }
        }
        for (kind, probe) in kinds {
            let Some(probe) = probe else { continue };
            let task = ProbeTask {
                cri: cri.clone(),
                container: t.spec.clone(),
                instance: instance.to_string(),
                pod_ip: ip,
                kind,
                probe,
                tx: tx.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(task.run());
        }
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// One level-triggered pass. Returns when to wake up next at the latest.
    async fn sync(&mut self) -> Option<Instant> {
        if self.deleting() {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64;
            self.terminate(Duration::from_secs(grace)).await;
            self.report().await;
            self.cleanup().await;
            self.finish_deletion().await;
            return None;
        }
        if let Some(_phase) = self.terminal {
            self.report().await;
            return None;
        }
        let mut wake: Option<Instant> = None;
        if self.sandbox.is_none() {
            match self.shared.net.setup(&self.uid).await {
                Ok(sb) => {
                    self.sandbox = Some(sb);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    if self.sandbox_error.as_deref() != Some(e.as_str()) {
                        self.shared.events.warn(
                            &self.pod,
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {e}"),
                        );
                    }
                    self.sandbox_error = Some(e);
                    self.report().await;
                    return Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
        let sources = self.fetch_sources().await;
        let claims = self.resolve_claims().await;
        if let Err(e) = claims.and_then(|()| self.prepare_volumes(&sources)) {
            let msg = match &e {
                VolumeError::Config(m) | VolumeError::Wait(m) => m.clone(),
            };
            if self.volume_error.as_ref() != Some(&e) {
                self.shared.events.warn(
                    &self.pod,
                    "FailedMount",
                    format!("MountVolume.SetUp failed: {msg}"),
                );
            }
            self.volume_error = Some(e);
            self.report().await;
            return Some(Instant::now() + Duration::from_secs(2));
        }
        self.volume_error = None;

        // Init containers in order, then every app container.
        let policy = self.restart_policy();
        let mut init_done = true;
        for i in 0..self.containers.len() {
            if !self.containers[i].init {
                continue;
            }
            let t = &self.containers[i];
            if t.sidecar {
                if !t.view.running() {
                    wake = earliest(wake, self.ensure_running(i, "Always", &sources).await);
                }
                let t = &self.containers[i];
                if !(t.view.running() && t.view.started) {
                    init_done = false;
                    break;
                }
                continue;
            }
            match t.view.exit_code() {
                Some(0) => continue,
                Some(_) if policy == "Never" => {
                    init_done = false;
                    break;
                }
                _ => {
                    if !t.view.running() {
                        wake = earliest(wake, self.ensure_running(i, "OnFailure", &sources).await);
                    }
                    init_done = false;
                    break;
                }
            }
        }
        if init_done {
            for i in 0..self.containers.len() {
                if self.containers[i].init {
                    continue;
                }
                if !self.containers[i].view.running() {
                    wake = earliest(wake, self.ensure_running(i, &policy, &sources).await);
                }
            }
        }
        let phase = self.phase();
        if phase.terminal() {
            // Stop what still runs (sidecars), release the network, keep the exited
            // containers for `kubectl logs` until the pod is deleted.
            self.terminate(Duration::from_secs(2)).await;
            if self.sandbox.take().is_some()
                && let Err(e) = self.shared.net.teardown(&self.uid).await
            {
                tracing::warn!(pod = %self.name(), "tearing down the pod network: {e}");
            }
            self.terminal = Some(phase);
        }
        self.report().await;
        wake
    }

    /// Starts container `i` if it never ran, or restarts it as `policy` allows once its
    /// backoff has passed. Returns when to look again.
    async fn ensure_running(
        &mut self,
        i: usize,
        policy: &str,
        sources: &Sources,
    ) -> Option<Instant> {
        let now = Instant::now();
        let t = &mut self.containers[i];
        if t.view.running() {
            return None;
        }
        if let Some(code) = t.view.exit_code() {
            let restart = match policy {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
            if !restart {
                t.view.waiting = None;
                return None;
            }
            // Decide the backoff once per exit.
            if t.restart_at.is_none() {
                let ran = match t.view.current.as_ref().map(|c| &c.state) {
                    Some(State::Exited {
                        started_at: Some(s),
                        finished_at,
                        ..
                    }) => {
                        Duration::from_secs(finished_at.duration_since(*s).as_secs().max(0) as u64)
                    }
                    _ => Duration::ZERO,
                };
                if ran >= BACKOFF_RESET {
                    t.backoff = Duration::ZERO;
                }
                t.restart_at = Some(now + t.backoff);
                let next = if t.backoff.is_zero() {
                    BACKOFF_INITIAL
                } else {
                    (t.backoff * 2).min(BACKOFF_MAX)
                };
                let current = t.backoff;
                t.backoff = next;
                if !current.is_zero() {
                    t.view.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            go_duration(current),
                            t.spec.name,
                            self.pod.metadata.name.as_deref().unwrap_or_default(),
                            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
                            self.uid
                        ),
                    ));
                    self.shared.events.warn(
                        &self.pod,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}",
                            t.spec.name,
                            self.pod.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
            let t = &mut self.containers[i];
            if let Some(at) = t.restart_at
                && at > now
            {
                return Some(at);
            }
        }
        if let Some(at) = self.containers[i].image_retry_at
            && at > now
        {
            return Some(at);
        }
        self.start_container(i, sources).await
    }

    async fn start_container(&mut self, i: usize, sources: &Sources) -> Option<Instant> {
        let pod = self.pod.clone();
        let c = self.containers[i].spec.clone();
        let reference = c.image.clone().unwrap_or_default();
        let pull_policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if reference.ends_with(":latest")
                || !reference
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .contains(':')
            {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let auth = self.pull_secrets().await;
        let normalized = normalize_image(&reference);
        self.containers[i].view.image = normalized.clone();
        let image = match self
            .shared
            .cri
            .ensure_image(&reference, &pull_policy, &auth)
            .await
        {
            Ok(img) => img,
            Err(e) => {
                let t = &mut self.containers[i];
                let (reason, msg, retry) = match e {
                    ImageError::Pull(m) => {
                        let reason =
                            if t.view.waiting.as_ref().is_some_and(|(r, _)| {
                                r == "ErrImagePull" || r == "ImagePullBackOff"
                            }) {
                                "ImagePullBackOff"
                            } else {
                                "ErrImagePull"
                            };
                        (reason, m, Some(Duration::from_secs(10)))
                    }
                    ImageError::NeverPull(m) => {
                        ("ErrImageNeverPull", m, Some(Duration::from_secs(10)))
                    }
                    ImageError::InvalidName(m) => ("InvalidImageName", m, None),
                };
                if reason == "ErrImagePull"
                    || reason == "ErrImageNeverPull"
                    || reason == "InvalidImageName"
                {
                    self.shared.events.warn(
                        &pod,
                        "Failed",
                        format!("Failed to pull image \"{reference}\": {msg}"),
                    );
                    self.shared
                        .events
                        .warn(&pod, "Failed", format!("Error: {reason}"));
                }
                let t = &mut self.containers[i];
                t.view.waiting = Some((
                    reason.to_string(),
                    if reason == "ImagePullBackOff" {
                        format!("Back-off pulling image \"{reference}\": {msg}")
                    } else {
                        msg
                    },
                ));
                t.image_retry_at = retry.map(|d| Instant::now() + d);
                return t.image_retry_at;
            }
        };
        self.containers[i].image_retry_at = None;
        self.containers[i].view.image_id = if image.id.is_empty() {
            normalized.clone()
        } else {
            format!("{}@{}", repo_of(&normalized), image.id)
        };
        let req = match self.request(i, &pod, &c, image, sources) {
            Ok(r) => r,
            Err(msg) => {
                let t = &mut self.containers[i];
                t.view.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                self.shared
                    .events
                    .warn(&pod, "Failed", format!("Error: {msg}"));
                return Some(Instant::now() + Duration::from_secs(10));
            }
        };
        let t = &mut self.containers[i];
        let attempt = req
            .labels
            .get(cri::LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        match self.shared.cri.start(&req).await {
            Ok(state) => {
                let t = &mut self.containers[i];
                // The run before the previous one is gone for good.
                if let Some(old) = t.view.previous.take() {
                    self.shared.cri.remove(&old.id);
                }
                let t = &mut self.containers[i];
                t.view.previous = t.view.current.take();
                t.view.current = Some(Instance {
                    id: req.id.clone(),
                    state: state.clone(),
                });
                t.view.restart_count = attempt;
                t.view.waiting = None;
                t.view.ready = false;
                t.view.started = false;
                t.restart_at = None;
                t.killing = false;
                self.shared.events.normal(
                    &pod,
                    "Created",
                    format!("Created container: {}", c.name),
                );
                self.shared
                    .events
                    .normal(&pod, "Started", format!("Started container {}", c.name));
                if matches!(state, State::Running { .. }) {
                    self.watch_exit(&c.name, &req.id);
                    self.post_start(i, &req.id).await;
                    self.start_probes(&c.name, &req.id, true);
                } else {
                    let _ = self.tx.send(Msg::Exited {
                        container: c.name.clone(),
                        instance: req.id.clone(),
                    });
                }
                None
            }
            Err(e) => {
                let _ = t;
                let t = &mut self.containers[i];
                t.view.waiting = Some((e.reason.to_string(), e.message.clone()));
                // A failed start counts as a failed run for the backoff.
                t.restart_at = Some(Instant::now() + t.backoff.max(BACKOFF_INITIAL));
                t.backoff = (t.backoff * 2).clamp(BACKOFF_INITIAL, BACKOFF_MAX);
                self.shared
                    .events
                    .warn(&pod, "Failed", format!("Error: {}", e.message));
                t.restart_at
            }
        }
    }

    async fn post_start(&mut self, i: usize, id: &str) {
        let c = self.containers[i].spec.clone();
        let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| IpAddr::V4(s.ip))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let action = if let Some(e) = &handler.exec {
            probes::Action::Exec(e.command.as_deref().unwrap_or_default())
        } else if let Some(h) = &handler.http_get {
            probes::Action::Http(h)
        } else if let Some(t) = &handler.tcp_socket {
            probes::Action::Tcp(t)
        } else {
            return;
        };
        if let Err(msg) = probes::run_action(
            &action,
            self.shared.cri.as_ref(),
            id,
            &c,
            ip,
            Duration::from_secs(30),
        )
        .await
        {
            self.shared.events.warn(
                &self.pod,
                "FailedPostStartHook",
                format!("PostStartHook failed: {msg}"),
            );
            stop_container(self.shared.cri.as_ref(), id, Duration::from_secs(2)).await;
        }
    }

    /// The runtime request for container `i`.
    fn request(
        &self,
        i: usize,
        pod: &Pod,
        c: &Container,
        image: cri::Image,
        sources: &Sources,
    ) -> Result<ContainerRequest, String> {
        let t = &self.containers[i];
        let attempt = match &t.view.current {
            Some(_) => t.view.restart_count + 1,
            None => t.view.restart_count,
        };
        let env = spec::environment(pod, c, &image, sources).map_err(|e| e.0)?;
        let args = spec::command_line(c, &image, &env);
        if args.is_empty() {
            return Err("no command specified".into());
        }
        let resources = spec::resources(c).map_err(|e| e.0)?;
        let security = spec::security(pod, c, &image).map_err(|e| e.0)?;
        let cfg = &self.shared.cfg;
        let pdir = pod_dir(cfg, &self.uid);
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(prepared) = self.volumes.get(&m.name) else {
                return Err(format!("volume {:?} is not defined in the pod", m.name));
            };
            let source =
                volumes::sub_path(&prepared.path, m.sub_path.as_deref().unwrap_or_default())
                    .map_err(|e| match e {
                        VolumeError::Config(m) | VolumeError::Wait(m) => m,
                    })?;
            mounts.push(Mount {
                destination: m.mount_path.clone(),
                source,
                kind: MountKind::Bind {
                    readonly: m.read_only == Some(true) || prepared.readonly,
                },
            });
        }
        let etc = pdir.join("etc");
        for (file, dest) in [
            ("hosts", "/etc/hosts"),
            ("hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            if !mounts.iter().any(|m| m.destination == dest) {
                mounts.push(Mount {
                    destination: dest.into(),
                    source: etc.join(file),
                    kind: MountKind::Bind { readonly: false },
                });
            }
        }
        let term_dir = pdir.join("containers").join(&c.name);
        std::fs::create_dir_all(&term_dir)
            .map_err(|e| format!("creating {}: {e}", term_dir.display()))?;
        let term_log = term_dir.join(format!("{attempt}-termination-log"));
        std::fs::write(&term_log, b"")
            .map_err(|e| format!("creating {}: {e}", term_log.display()))?;
        let term_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push(Mount {
            destination: term_path,
            source: term_log,
            kind: MountKind::Bind { readonly: false },
        });

        let id = sha256_hex(format!("{}/{}/{attempt}", self.uid, c.name).as_bytes());
        let mut labels = BTreeMap::new();
        labels.insert(cri::LABEL_POD_UID.to_string(), self.uid.clone());
        labels.insert(cri::LABEL_POD_NAME.to_string(), self.name().to_string());
        labels.insert(
            cri::LABEL_POD_NAMESPACE.to_string(),
            self.namespace().to_string(),
        );
        labels.insert(cri::LABEL_CONTAINER.to_string(), c.name.clone());
        labels.insert(cri::LABEL_ATTEMPT.to_string(), attempt.to_string());
        labels.insert(cri::LABEL_IMAGE_ID.to_string(), t.view.image_id.clone());
        let hostname = hostname_of(pod);
        let cwd = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| {
                if image.working_dir.is_empty() {
                    "/".into()
                } else {
                    image.working_dir.clone()
                }
            });
        Ok(ContainerRequest {
            id,
            labels,
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            hostname,
            netns: self.sandbox.as_ref().map(|s| s.netns.clone()),
            mounts,
            resources,
            cgroup_parent: format!("/skiff/pod{}", self.uid),
            security,
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
            log_path: log_path(cfg, pod, &c.name, attempt),
            image,
        })
    }

    async fn pull_secrets(&self) -> Vec<(String, String, String)> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .map(|v| v.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), self.namespace());
        for n in names {
            let Ok(Some(s)) = api.get_opt(&n).await else {
                continue;
            };
            let Some(cfg) = s.data.as_ref().and_then(|d| d.get(".dockerconfigjson")) else {
                continue;
            };
            out.extend(docker_config_auths(&cfg.0));
        }
        out
    }

    /// Config maps, secrets and services the pod's containers and volumes use.
    async fn fetch_sources(&self) -> Sources {
        let mut cms: Vec<String> = Vec::new();
        let mut secrets: Vec<String> = Vec::new();
        for t in &self.containers {
            let (c, s) = spec::env_sources(&t.spec);
            cms.extend(c);
            secrets.extend(s);
        }
        for v in self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(cm) = &v.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                secrets.push(s);
            }
            for src in v
                .projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .into_iter()
                .flatten()
            {
                if let Some(cm) = &src.config_map {
                    cms.push(cm.name.clone());
                }
                if let Some(s) = &src.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
        cms.sort();
        cms.dedup();
        secrets.sort();
        secrets.dedup();
        let ns = self.namespace();
        let client = &self.shared.client;
        let mut sources = Sources {
            node_cpu_millis: self.shared.cfg.node_cpu_millis,
            node_memory_bytes: self.shared.cfg.node_memory_bytes,
            ..Default::default()
        };
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for n in cms {
            let v = cm_api.get_opt(&n).await.ok().flatten().map(|cm| {
                let mut d: BTreeMap<String, String> = cm.data.unwrap_or_default();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    d.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                d
            });
            sources.config_maps.insert(n, v);
        }
        let s_api: Api<Secret> = Api::namespaced(client.clone(), ns);
        for n in secrets {
            let v = s_api.get_opt(&n).await.ok().flatten().map(|s| {
                let mut d: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    d.insert(k, v.into_bytes());
                }
                d
            });
            sources.secrets.insert(n, v);
        }
        // Service links only matter before a container starts.
        if self.containers.iter().any(|t| !t.view.running()) {
            let mut services: Vec<Service> = Api::<Service>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            if ns != "default"
                && let Ok(Some(k)) = Api::<Service>::namespaced(client.clone(), "default")
                    .get_opt("kubernetes")
                    .await
            {
                services.push(k);
            }
            sources.services = services;
        }
        sources
    }

    /// Finds (provisioning when needed) the host directory of every claim the pod uses.
    async fn resolve_claims(&mut self) -> Result<(), VolumeError> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.clone())
            })
            .collect();
        for name in names {
            if self.claims.contains_key(&name) {
                continue;
            }
            let cfg = &self.shared.cfg;
            let path = super::storage::claim_path(
                &self.shared.client,
                &cfg.agent_dir.join("storage"),
                &cfg.node_name,
                self.namespace(),
                &name,
            )
            .await?;
            self.claims.insert(name, path);
        }
        Ok(())
    }

    /// Makes every volume of the pod exist on the node; writes /etc files of the pod.
    fn prepare_volumes(&mut self, sources: &Sources) -> Result<(), VolumeError> {
        let cfg = self.shared.cfg.clone();
        let pdir = pod_dir(&cfg, &self.uid);
        let io = |e: std::io::Error, p: &std::path::Path| {
            VolumeError::Config(format!("{}: {e}", p.display()))
        };
        let etc = pdir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| io(e, &etc))?;
        let pod = self.pod.clone();
        let ip = self.sandbox.as_ref().map(|s| s.ip);
        write_if_changed(&etc.join("hosts"), hosts_file(&pod, ip).as_bytes())
            .map_err(|e| io(e, &etc))?;
        write_if_changed(
            &etc.join("hostname"),
            format!("{}\n", hostname_of(&pod)).as_bytes(),
        )
        .map_err(|e| io(e, &etc))?;
        write_if_changed(&etc.join("resolv.conf"), resolv_conf(&pod, &cfg).as_bytes())
            .map_err(|e| io(e, &etc))?;
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let dir = volumes::volume_dir(&pdir, v);
            let prepared = if let Some(e) = &v.empty_dir {
                volumes::empty_dir(
                    &dir,
                    e.medium.as_deref(),
                    e.size_limit.as_ref().map(|q| q.0.as_str()),
                )?;
                volumes::Prepared {
                    path: dir,
                    readonly: false,
                }
            } else if let Some(h) = &v.host_path {
                volumes::Prepared {
                    path: volumes::host_path(&h.path, h.type_.as_deref())?,
                    readonly: false,
                }
            } else if let Some(pvc) = &v.persistent_volume_claim {
                match self.claims.get(&pvc.claim_name) {
                    Some(path) => volumes::Prepared {
                        path: path.clone(),
                        readonly: pvc.read_only == Some(true),
                    },
                    None => {
                        return Err(VolumeError::Wait(format!(
                            "persistentVolumeClaim {:?} is not resolved yet",
                            pvc.claim_name
                        )));
                    }
                }
            } else if let Some(payload) = volumes::payload(&pod, v, sources)? {
                if v.secret.is_some() || v.projected.is_some() {
                    volumes::ensure_tmpfs(&dir, None)?;
                }
                volumes::write_atomic(&dir, &payload)?;
                volumes::Prepared {
                    path: dir,
                    readonly: true,
                }
            } else {
                return Err(VolumeError::Config(format!(
                    "volume {:?} has a type this node does not support",
                    v.name
                )));
            };
            self.volumes.insert(v.name.clone(), prepared);
        }
        Ok(())
    }

    fn phase(&self) -> Phase {
        let (init, app) = self.views();
        status::phase(&self.restart_policy(), &init, &app)
    }

    fn views(&self) -> (Vec<ContainerView>, Vec<ContainerView>) {
        let mut init = Vec::new();
        let mut app = Vec::new();
        for t in &self.containers {
            let mut v = t.view.clone();
            if v.image.is_empty() {
                v.image = normalize_image(t.spec.image.as_deref().unwrap_or_default());
            }
            if v.image_id.is_empty() {
                v.image_id = String::new();
            }
            if v.current.is_none() && v.waiting.is_none() {
                let reason = if t.init || self.phase_pending_init() {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                };
                let reason = if t.init
                    && self
                        .containers
                        .iter()
                        .take_while(|o| o.init)
                        .position(|o| o.spec.name == t.spec.name)
                        == Some(0)
                {
                    "ContainerCreating"
                } else {
                    reason
                };
                v.waiting = Some((reason.into(), String::new()));
            }
            if t.init { init.push(v) } else { app.push(v) }
        }
        (init, app)
    }

    fn phase_pending_init(&self) -> bool {
        self.containers
            .iter()
            .any(|t| t.init && !(t.view.exit_code() == Some(0) || (t.sidecar && t.view.running())))
    }

    /// Sends the status when it changed.
    async fn report(&mut self) {
        let (init, app) = self.views();
        let policy = self.restart_policy();
        let phase = self
            .terminal
            .unwrap_or_else(|| status::phase(&policy, &init, &app));
        let conds = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        let scheduled = conds
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .and_then(|c| serde_json::to_value(c).ok());
        let other_conditions = conds
            .map(|cs| {
                cs.iter()
                    .filter(|c| {
                        ![
                            "PodReadyToStartContainers",
                            "Initialized",
                            "Ready",
                            "ContainersReady",
                            "PodScheduled",
                        ]
                        .contains(&c.type_.as_str())
                    })
                    .map(|c| c.type_.clone())
                    .collect()
            })
            .unwrap_or_default();
        let view = PodView {
            phase,
            restart_policy: &policy,
            init: &init,
            app: &app,
            sandbox_ready: self.sandbox.is_some(),
            host_ip: self.shared.cfg.node_ip,
            pod_ip: self.sandbox.as_ref().map(|s| s.ip).or_else(|| {
                self.pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse().ok())
            }),
            start_time: self.start_time,
            qos_class: qos_class(&self.pod),
            scheduled,
            other_conditions,
            failure: None,
        };
        let patch = status::status_patch(&view, &mut self.transitions, Timestamp::now());
        if self.last_patch.as_ref() == Some(&patch) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), self.namespace());
        match api
            .patch_status(
                self.name(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => self.last_patch = Some(patch),
            Err(kube::Error::Api(s)) if s.code == 404 => self.last_patch = Some(patch),
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", self.namespace(), self.name()), "reporting pod status: {e}")
            }
        }
    }

    /// Stops every running container: preStop hooks, then the stop signal, then SIGKILL
    /// when `grace` runs out.
    async fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| IpAddr::V4(s.ip))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut stops = Vec::new();
        for t in &mut self.containers {
            if let Some(p) = t.probes.take() {
                p.cancel();
            }
            let Some(Instance {
                id,
                state: State::Running { .. },
            }) = t.view.current.clone()
            else {
                continue;
            };
            let cri = self.shared.cri.clone();
            let c = t.spec.clone();
            let events = self.shared.events.clone();
            let pod = self.pod.clone();
            stops.push(async move {
                events.normal(&pod, "Killing", format!("Stopping container {}", c.name));
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    let action = if let Some(e) = &h.exec {
                        Some(probes::Action::Exec(
                            e.command.as_deref().unwrap_or_default(),
                        ))
                    } else if let Some(h) = &h.http_get {
                        Some(probes::Action::Http(h))
                    } else {
                        h.tcp_socket.as_ref().map(probes::Action::Tcp)
                    };
                    if let Some(a) = action {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let run = probes::run_action(
                            &a,
                            cri.as_ref(),
                            &id,
                            &c,
                            ip,
                            left.max(Duration::from_secs(1)),
                        );
                        if let Ok(Err(msg)) = tokio::time::timeout(left, run).await {
                            events.warn(
                                &pod,
                                "FailedPreStopHook",
                                format!("PreStopHook failed: {msg}"),
                            );
                        }
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                stop_container(cri.as_ref(), &id, left).await;
            });
        }
        futures::future::join_all(stops).await;
        for t in &mut self.containers {
            if let Some(cur) = &t.view.current
                && let Some(state) = self.shared.cri.state(&cur.id)
            {
                t.view.current = Some(Instance {
                    id: cur.id.clone(),
                    state,
                });
            }
            t.view.ready = false;
            t.view.waiting = None;
            t.restart_at = None;
        }
    }

    /// Removes containers, volumes and the network of the pod.
    async fn cleanup(&mut self) {
        for (_, w) in self.waiters.drain() {
            w.abort();
        }
        for t in &self.containers {
            for i in [&t.view.current, &t.view.previous].into_iter().flatten() {
                self.shared.cri.remove(&i.id);
            }
        }
        // Anything else of this pod the runtime still has.
        for l in self.shared.cri.list() {
            if l.labels.get(cri::LABEL_POD_UID) == Some(&self.uid) {
                self.shared.cri.remove(&l.id);
            }
        }
        if let Err(e) = self.shared.net.teardown(&self.uid).await {
            tracing::warn!(pod = %self.name(), "tearing down the pod network: {e}");
        }
        tracing::debug!(pod = %self.name(), "pod network torn down");
        self.sandbox = None;
        let dir = pod_dir(&self.shared.cfg, &self.uid);
        if let Err(e) = volumes::remove_pod_dir(&dir) {
            tracing::warn!(pod = %self.name(), "removing {}: {e}", dir.display());
        }
        let logs = pod_log_dir(&self.shared.cfg, &self.pod);
        let _ = std::fs::remove_dir_all(logs);
        self.cleaned = true;
    }

    /// Deletes the pod object for good (grace 0, this UID only), as upstream's status manager.
    async fn finish_deletion(&self) {
        tracing::debug!(pod = %self.name(), "finishing the deletion");
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), self.namespace());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(self.name(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.name(), "finishing deletion: {e}"),
        }
    }

    async fn force_remove(&mut self) {
        self.terminate(Duration::ZERO).await;
        self.cleanup().await;
    }
}

impl Tracked {
    fn new(spec: Container, init: bool) -> Tracked {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        let view = ContainerView {
            name: spec.name.clone(),
            image: normalize_image(spec.image.as_deref().unwrap_or_default()),
            sidecar,
            volume_mounts: spec
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| {
                    let mut v = json!({ "name": m.name, "mountPath": m.mount_path });
                    if m.read_only == Some(true) {
                        v["readOnly"] = json!(true);
                        v["recursiveReadOnly"] = json!("Disabled");
                    }
                    v
                })
                .collect(),
            ..Default::default()
        };
        Tracked {
            spec,
            init,
            sidecar,
            view,
            backoff: Duration::ZERO,
            restart_at: None,
            probes: None,
            image_retry_at: None,
            killing: false,
        }
    }
}

/// Sends the stop signal, waits up to `grace`, then SIGKILL and waits for the exit.
pub async fn stop_container(cri: &dyn Cri, id: &str, grace: Duration) {
    if !matches!(cri.state(id), Some(State::Running { .. })) {
        return;
    }
    if !grace.is_zero() {
        cri.signal(id, libc_sig::SIGTERM);
        if tokio::time::timeout(grace, cri.wait(id)).await.is_ok() {
            return;
        }
    }
    cri.signal(id, libc_sig::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(10), cri.wait(id)).await;
}

mod libc_sig {
    pub const SIGTERM: i32 = 15;
    pub const SIGKILL: i32 = 9;
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn repo_of(normalized: &str) -> &str {
    let no_digest = normalized.split('@').next().unwrap_or(normalized);
    match no_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => no_digest,
    }
}

/// The container's hostname: `spec.hostname` or the pod name, at most 63 characters.
pub fn hostname_of(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut h: String = h.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// `/etc/hosts` as upstream's kubelet writes it.
pub fn hosts_file(pod: &Pod, ip: Option<Ipv4Addr>) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    let host = hostname_of(pod);
    if let Some(ip) = ip {
        match spec
            .and_then(|s| s.subdomain.as_deref())
            .filter(|d| !d.is_empty())
        {
            Some(sub) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                s.push_str(&format!(
                    "{ip}\t{host}.{sub}.{ns}.svc.cluster.local\t{host}\n"
                ));
            }
            None => s.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    let aliases = spec.and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.clone().unwrap_or_default().join("\t");
            s.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    s
}

/// `/etc/resolv.conf` per `dnsPolicy` and `dnsConfig`.
pub fn resolv_conf(pod: &Pod, cfg: &NodeConfig) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "None" => (vec![], vec![], vec![]),
            "Default" => host_resolv(),
            "ClusterFirst" if host_network => host_resolv(),
            _ => (
                vec![cfg.cluster_dns.to_string()],
                vec![
                    format!("{ns}.svc.{}", cfg.cluster_domain),
                    format!("svc.{}", cfg.cluster_domain),
                    cfg.cluster_domain.clone(),
                ],
                vec!["ndots:5".into()],
            ),
        };
    if let Some(dc) = spec.and_then(|s| s.dns_config.as_ref()) {
        for n in dc.nameservers.iter().flatten() {
            if !servers.contains(n) {
                servers.push(n.clone());
            }
        }
        for d in dc.searches.iter().flatten() {
            if !searches.contains(d) {
                searches.push(d.clone());
            }
        }
        for o in dc.options.iter().flatten() {
            let text = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = text.split(':').next().unwrap_or_default().to_string();
            options.retain(|x| x.split(':').next() != Some(key.as_str()));
            options.push(text);
        }
    }
    servers.truncate(3);
    searches.truncate(32);
    let mut s = String::new();
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for n in servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut n, mut s, mut o) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => n.extend(parts.next().map(str::to_string)),
            Some("search") => s.extend(parts.map(str::to_string)),
            Some("options") => o.extend(parts.map(str::to_string)),
            _ => {}
        }
    }
    (n, s, o)
}

fn write_if_changed(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// `<agent>/logs/pods/<ns>_<name>_<uid>`, upstream's /var/log/pods layout.
pub fn pod_log_dir(cfg: &NodeConfig, pod: &Pod) -> PathBuf {
    cfg.agent_dir.join("logs").join("pods").join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    ))
}

pub fn log_path(cfg: &NodeConfig, pod: &Pod, container: &str, attempt: i32) -> PathBuf {
    pod_log_dir(cfg, pod)
        .join(container)
        .join(format!("{attempt}.log"))
}

/// `(registry, username, password)` entries of a `.dockerconfigjson`.
fn docker_config_auths(raw: &[u8]) -> Vec<(String, String, String)> {
    use base64::Engine as _;
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (registry, entry) in v["auths"].as_object().into_iter().flatten() {
        let (mut user, mut pass) = (
            entry["username"].as_str().unwrap_or_default().to_string(),
            entry["password"].as_str().unwrap_or_default().to_string(),
        );
        if let Some(auth) = entry["auth"].as_str()
            && let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(auth)
            && let Some((u, p)) = String::from_utf8_lossy(&dec).split_once(':')
        {
            user = u.to_string();
            pass = p.to_string();
        }
        out.push((registry.clone(), user, pass));
    }
    out
}
