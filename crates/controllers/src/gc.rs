//! Garbage collector (upstream `pkg/controller/garbagecollector`): watches the metadata of every
//! deletable resource, keeps an owner → dependents graph by uid, and
//! - deletes dependents whose owners are all gone (background), or drops the dangling
//!   references when some owner remains;
//! - for an owner deleted with `propagationPolicy: Orphan` (the `orphan` finalizer), removes its
//!   references from every dependent and then the finalizer;
//! - for an owner deleted with `propagationPolicy: Foreground` (the `foregroundDeletion`
//!   finalizer), deletes its dependents (foreground, so grandchildren go first) and removes the
//!   finalizer once no dependent with `blockOwnerDeletion` remains.
//!
//! The graph only decides what to look at: every deletion is re-checked against live GETs of
//! the object and its owners first, as upstream does, so a stale or lagging watch never makes us
//! delete something whose owner exists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::util::{
    self, FINALIZER_FOREGROUND, FINALIZER_ORPHAN, ServedResource, ServedResources, WorkQueue,
};

/// How often discovery is re-run to pick up new or removed resource types.
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// Upstream runs 20 attemptToDelete workers and 20 attemptToOrphan workers; two cores here.
const WORKERS: usize = 4;
/// Resources upstream's garbage collector ignores by default (`DefaultIgnoredResources`).
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];
/// Upper bound of the absent-owner cache: uids never come back, so entries never go stale.
const ABSENT_CACHE_MAX: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The dependency graph (pure: no I/O, unit tested)
// ---------------------------------------------------------------------------------------------

/// Which object a graph node stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// What a watch reported about one object.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: ObjectId,
    pub owners: Vec<OwnerReference>,
    pub being_deleted: bool,
    pub finalizers: Vec<String>,
}

/// Work for the workers, by uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Check whether the object should be deleted (or its dangling refs removed), or, for an
    /// owner being deleted in the foreground, whether its finalizer can go.
    Delete(String),
    /// Orphan the dependents of an owner deleted with the `orphan` finalizer.
    Orphan(String),
}

#[derive(Debug, Clone)]
struct Node {
    id: ObjectId,
    owners: Vec<OwnerReference>,
    dependents: HashSet<String>,
    being_deleted: bool,
    deleting_dependents: bool,
    /// Known only from an owner reference; not (yet) observed by a watch.
    virtual_: bool,
}

fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

/// The owner → dependents graph (upstream `GraphBuilder`'s `uidToNode`).
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
}

impl Graph {
    /// Number of nodes, virtual ones included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The uids of the dependents recorded for `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<String> {
        let mut d: Vec<String> = self
            .nodes
            .get(uid)
            .map(|n| n.dependents.iter().cloned().collect())
            .unwrap_or_default();
        d.sort();
        d
    }

    /// Records an added or updated object; returns the work it causes.
    /// `owner_scope(apiVersion, kind)` says whether an owner kind is namespaced (None: unknown).
    pub fn observe(
        &mut self,
        obs: Observed,
        owner_scope: &dyn Fn(&str, &str) -> Option<bool>,
    ) -> Vec<Work> {
        let mut work = Vec::new();
        let uid = obs.id.uid.clone();
        let deleting_dependents =
            obs.being_deleted && obs.finalizers.iter().any(|f| f == FINALIZER_FOREGROUND);
        let orphaning = obs.being_deleted && obs.finalizers.iter().any(|f| f == FINALIZER_ORPHAN);
        let was_deleting_dependents;
        match self.nodes.get_mut(&uid) {
            None => {
                was_deleting_dependents = false;
                self.nodes.insert(
                    uid.clone(),
                    Node {
                        id: obs.id.clone(),
                        owners: obs.owners.clone(),
                        dependents: HashSet::new(),
                        being_deleted: obs.being_deleted,
                        deleting_dependents,
                        virtual_: false,
                    },
                );
                for r in &obs.owners {
                    self.add_dependent(r, &obs.id, owner_scope, &mut work);
                }
            }
            Some(node) => {
                was_deleting_dependents = node.deleting_dependents && !node.virtual_;
                let old_owners = std::mem::replace(&mut node.owners, obs.owners.clone());
                node.id = obs.id.clone();
                node.virtual_ = false;
                node.being_deleted = obs.being_deleted;
                node.deleting_dependents = deleting_dependents;
                let old: HashMap<&str, &OwnerReference> =
                    old_owners.iter().map(|r| (r.uid.as_str(), r)).collect();
                let new: HashMap<&str, &OwnerReference> =
                    obs.owners.iter().map(|r| (r.uid.as_str(), r)).collect();
                for r in &obs.owners {
                    if !old.contains_key(r.uid.as_str()) {
                        self.add_dependent(r, &obs.id, owner_scope, &mut work);
                    }
                }
                for r in &old_owners {
                    let removed = !new.contains_key(r.uid.as_str());
                    let unblocked = new
                        .get(r.uid.as_str())
                        .is_some_and(|n| blocks(r) && !blocks(n));
                    if removed && let Some(owner) = self.nodes.get_mut(&r.uid) {
                        owner.dependents.remove(&uid);
                    }
                    // A foreground-deleting owner may be waiting for exactly this dependent.
                    if (removed && blocks(r)) || unblocked {
                        self.enqueue_if_deleting_dependents(&r.uid, &mut work);
                    }
                }
            }
        }
        if orphaning {
            work.push(Work::Orphan(uid.clone()));
        }
        if deleting_dependents {
            if !was_deleting_dependents {
                // Upstream's startsWaitingForDependentsDeleted: every dependent gets a look.
                work.extend(self.dependents(&uid).into_iter().map(Work::Delete));
            }
            work.push(Work::Delete(uid));
        }
        work
    }

    fn enqueue_if_deleting_dependents(&self, uid: &str, work: &mut Vec<Work>) {
        if self.nodes.get(uid).is_some_and(|n| n.deleting_dependents) {
            work.push(Work::Delete(uid.to_string()));
        }
    }

    fn add_dependent(
        &mut self,
        r: &OwnerReference,
        dependent: &ObjectId,
        owner_scope: &dyn Fn(&str, &str) -> Option<bool>,
        work: &mut Vec<Work>,
    ) {
        match self.nodes.get_mut(&r.uid) {
            Some(owner) => {
                owner.dependents.insert(dependent.uid.clone());
                // A dependent appearing under an owner already deleting in the foreground
                // would otherwise never be looked at.
                if owner.deleting_dependents {
                    work.push(Work::Delete(dependent.uid.clone()));
                }
            }
            None => {
                // Unknown owner: a virtual node, checked against the API by a worker.
                let namespace = match owner_scope(&r.api_version, &r.kind) {
                    Some(false) => None,
                    _ => dependent.namespace.clone(),
                };
                let id = ObjectId {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace,
                    name: r.name.clone(),
                    uid: r.uid.clone(),
                };
                let mut dependents = HashSet::new();
                dependents.insert(dependent.uid.clone());
                self.nodes.insert(
                    r.uid.clone(),
                    Node {
                        id,
                        owners: Vec::new(),
                        dependents,
                        being_deleted: false,
                        deleting_dependents: false,
                        virtual_: true,
                    },
                );
                work.push(Work::Delete(r.uid.clone()));
            }
        }
    }

    /// Records that an object is gone; returns the work it causes.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let mut work = Vec::new();
        let Some(node) = self.nodes.remove(uid) else {
            return work;
        };
        for r in &node.owners {
            if let Some(owner) = self.nodes.get_mut(&r.uid) {
                owner.dependents.remove(uid);
                if owner.deleting_dependents {
                    work.push(Work::Delete(r.uid.clone()));
                }
            }
        }
        let mut deps: Vec<String> = node.dependents.into_iter().collect();
        deps.sort();
        work.extend(deps.into_iter().map(Work::Delete));
        work
    }

    /// The uids of graph nodes of this kind that were observed (not virtual).
    fn observed_of_kind(&self, group: &str, kind: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                !n.virtual_ && n.id.kind == kind && group_of(&n.id.api_version) == group
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

// ---------------------------------------------------------------------------------------------
// Decisions (pure, unit tested)
// ---------------------------------------------------------------------------------------------

/// What a live lookup found for one owner reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not being deleted in the foreground.
    Solid,
    /// No object with the referenced uid exists.
    Dangling,
    /// The owner is being deleted in the foreground and waits for its dependents.
    WaitingForDependents,
}

/// What to do with an object whose owner references were classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Nothing,
    /// Remove the owner references with these uids.
    RemoveRefs(Vec<String>),
    /// Set blockOwnerDeletion=false on the blocking references (cycle breaking), then delete
    /// in the foreground.
    UnblockThenDeleteForeground,
    Delete(PropagationPolicy),
}

/// Upstream `attemptToDeleteItem`'s switch over solid / dangling / waiting owners.
/// `has_dependents`: the object has dependents in the graph; `dependent_deleting_dependents`:
/// one of them is itself deleting its dependents (a potential cycle).
pub fn decide(
    refs: &[(OwnerReference, OwnerState)],
    has_dependents: bool,
    dependent_deleting_dependents: bool,
    finalizers: &[String],
) -> Decision {
    let uids = |state: OwnerState| {
        refs.iter()
            .filter(move |(_, s)| *s == state)
            .map(|(r, _)| r.uid.clone())
    };
    let solid = uids(OwnerState::Solid).count();
    let dangling: Vec<String> = uids(OwnerState::Dangling).collect();
    let waiting: Vec<String> = uids(OwnerState::WaitingForDependents).collect();
    if refs.is_empty() {
        return Decision::Nothing;
    }
    if solid > 0 {
        if dangling.is_empty() && waiting.is_empty() {
            return Decision::Nothing;
        }
        // Some owner stays: only drop the references that no longer hold it.
        return Decision::RemoveRefs(dangling.into_iter().chain(waiting).collect());
    }
    if !waiting.is_empty() && has_dependents {
        // Owners wait on us and we have dependents: delete in the foreground so ours go first.
        return if dependent_deleting_dependents {
            Decision::UnblockThenDeleteForeground
        } else {
            Decision::Delete(PropagationPolicy::Foreground)
        };
    }
    // Every owner is gone (or waits on us and we have no dependents). Keep the policy the
    // object's own finalizers ask for.
    let policy = if finalizers.iter().any(|f| f == FINALIZER_ORPHAN) {
        PropagationPolicy::Orphan
    } else if finalizers.iter().any(|f| f == FINALIZER_FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    Decision::Delete(policy)
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum GcError {
    #[error("unable to get REST mapping for {api_version}/{kind}")]
    NoMapping { api_version: String, kind: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} not observed by a watch yet")]
    NotObserved(String),
    #[error("dependency graph not synced yet")]
    NotSynced,
    #[error("conflict persisted updating {0}")]
    Conflict(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> GcError {
    let what = what.into();
    move |source| GcError::Api { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

struct Monitor {
    stop: CancellationToken,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

struct Gc {
    client: kube::Client,
    graph: Mutex<Graph>,
    mapper: Mutex<Arc<ServedResources>>,
    queue: Arc<WorkQueue<Work>>,
    monitors: Mutex<HashMap<(String, String), Monitor>>,
    absent: Mutex<HashSet<String>>,
    recorder: crate::events::Recorder,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent at every await-free step; a panic elsewhere must
    // not stop the collector.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the garbage collector until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    let gc = Arc::new(Gc {
        client: ctx.client.clone(),
        graph: Mutex::new(Graph::default()),
        mapper: Mutex::new(Arc::new(ServedResources::default())),
        queue: WorkQueue::new(Duration::from_millis(20), Duration::from_secs(60)),
        monitors: Mutex::new(HashMap::new()),
        absent: Mutex::new(HashSet::new()),
        recorder: ctx.recorder.clone(),
    });
    let shutdown = ctx.shutdown.clone();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let gc = gc.clone();
        tasks.spawn(async move { gc.worker().await });
    }
    // Re-run discovery when a CRD changes (new kinds appear, old ones go).
    let (crd_tx, mut crd_rx) = tokio::sync::mpsc::channel::<()>(1);
    {
        let client = ctx.client.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let crds: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
            let stream = watcher(crds, watcher::Config::default());
            futures::pin_mut!(stream);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = stream.next() => match ev {
                        Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => { let _ = crd_tx.try_send(()); }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => { tracing::debug!("gc: CRD watch: {e}"); tokio::time::sleep(Duration::from_secs(1)).await; }
                        None => return,
                    }
                }
            }
        });
    }

    loop {
        if let Err(e) = gc.resync_monitors(&shutdown).await {
            tracing::warn!("garbage collector: discovery failed: {e:#}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RESYNC_PERIOD) => {}
            Some(()) = crd_rx.recv() => {
                // Let the API server finish installing or removing the CRD's resource.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    gc.queue.shut_down();
    for m in lock(&gc.monitors).values() {
        m.stop.cancel();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

impl Gc {
    fn mapper(&self) -> Arc<ServedResources> {
        lock(&self.mapper).clone()
    }

    fn all_synced(&self) -> bool {
        let monitors = lock(&self.monitors);
        !monitors.is_empty()
            && monitors
                .values()
                .all(|m| m.synced.load(std::sync::atomic::Ordering::Acquire))
    }

    fn enqueue(&self, work: Vec<Work>) {
        for w in work {
            self.queue.add(w);
        }
    }

    /// Discovers the deletable resources, starts a watch for each new one and stops those of
    /// resources no longer served (upstream `resyncMonitors`).
    async fn resync_monitors(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let served = util::discover(&self.client).await?;
        let deletable: Vec<ServedResource> = served
            .deletable()
            .into_iter()
            .filter(|r| !IGNORED.contains(&(r.resource.group.as_str(), r.resource.plural.as_str())))
            .collect();
        // Keep the old table: kinds of resources no longer served are only found there.
        let old = std::mem::replace(&mut *lock(&self.mapper), Arc::new(served));
        let wanted: HashMap<(String, String), ServedResource> = deletable
            .into_iter()
            .map(|r| ((r.resource.group.clone(), r.resource.plural.clone()), r))
            .collect();
        let mut gone_kinds = Vec::new();
        {
            let mut monitors = lock(&self.monitors);
            monitors.retain(|key, m| {
                let keep = wanted.contains_key(key);
                if !keep {
                    m.stop.cancel();
                    gone_kinds.push(key.clone());
                }
                keep
            });
            for (key, res) in &wanted {
                if monitors.contains_key(key) {
                    continue;
                }
                let stop = shutdown.child_token();
                let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let gc = self.clone();
                let (res, stop2, synced2) = (res.clone(), stop.clone(), synced.clone());
                tokio::spawn(async move { gc.monitor(res, stop2, synced2).await });
                monitors.insert(key.clone(), Monitor { stop, synced });
                tracing::debug!(resource = %format!("{}.{}", key.1, key.0), "garbage collector: watching");
            }
        }
        // A resource type that is no longer served took its objects with it.
        if !gone_kinds.is_empty() {
            for (group, plural) in gone_kinds {
                let kind = old
                    .preferred
                    .iter()
                    .find(|r| r.resource.group == group && r.resource.plural == plural)
                    .map(|r| r.resource.kind.clone());
                let Some(kind) = kind else { continue };
                let mut graph = lock(&self.graph);
                let mut work = Vec::new();
                for uid in graph.observed_of_kind(&group, &kind) {
                    work.extend(graph.remove(&uid));
                }
                drop(graph);
                self.enqueue(work);
            }
        }
        Ok(())
    }

    /// Watches one resource's metadata and feeds the graph (upstream's monitors + graph builder).
    async fn monitor(
        self: Arc<Self>,
        res: ServedResource,
        stop: CancellationToken,
        synced: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &res.resource);
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        // uids seen since the last (re)list, to notice objects deleted while not watching.
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(resource = %res.group_resource(), "garbage collector watch: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Some(Ok(watcher::Event::Init)) => relisted = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(obj))) => {
                    if let (Some(seen), Some(uid)) = (relisted.as_mut(), obj.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.observe(&res, obj);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = relisted.take() {
                        let mut graph = lock(&self.graph);
                        let mut work = Vec::new();
                        for uid in graph.observed_of_kind(&res.resource.group, &res.resource.kind) {
                            if !seen.contains(&uid) {
                                work.extend(graph.remove(&uid));
                            }
                        }
                        drop(graph);
                        self.enqueue(work);
                    }
                    synced.store(true, std::sync::atomic::Ordering::Release);
                }
                Some(Ok(watcher::Event::Apply(obj))) => self.observe(&res, obj),
                Some(Ok(watcher::Event::Delete(obj))) => {
                    let Some(uid) = obj.metadata.uid.clone() else {
                        continue;
                    };
                    let work = lock(&self.graph).remove(&uid);
                    self.remember_absent(&uid);
                    self.enqueue(work);
                }
            }
        }
    }

    fn observe(&self, res: &ServedResource, obj: PartialObjectMeta<DynamicObject>) {
        let meta = obj.metadata;
        let (Some(uid), Some(name)) = (meta.uid, meta.name) else {
            return;
        };
        let obs = Observed {
            id: ObjectId {
                api_version: res.resource.api_version.clone(),
                kind: res.resource.kind.clone(),
                namespace: meta.namespace,
                name,
                uid,
            },
            owners: meta.owner_references.unwrap_or_default(),
            being_deleted: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.unwrap_or_default(),
        };
        let mapper = self.mapper();
        let scope = |av: &str, kind: &str| mapper.resolve(av, kind).map(|r| r.namespaced);
        let work = lock(&self.graph).observe(obs, &scope);
        self.enqueue(work);
    }

    fn remember_absent(&self, uid: &str) {
        let mut absent = lock(&self.absent);
        if absent.len() >= ABSENT_CACHE_MAX {
            absent.clear();
        }
        absent.insert(uid.to_string());
    }

    async fn worker(self: Arc<Self>) {
        while let Some(item) = self.queue.get().await {
            let result = match &item {
                Work::Delete(uid) => self.attempt_to_delete(uid).await,
                Work::Orphan(uid) => self.attempt_to_orphan(uid).await,
            };
            match result {
                Ok(()) => self.queue.forget(&item),
                // Waiting for the watches is not a failure: retry soon, without backing off.
                Err(GcError::NotSynced) => self
                    .queue
                    .add_after(item.clone(), Duration::from_millis(200)),
                Err(e) => {
                    match &e {
                        GcError::NotObserved(_) => {
                            tracing::trace!("garbage collector: {item:?}: {e}")
                        }
                        _ => tracing::debug!("garbage collector: {item:?}: {e}"),
                    }
                    self.queue.add_rate_limited(item.clone());
                }
            }
            self.queue.done(&item);
        }
    }

    fn api_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(Api<DynamicObject>, ServedResource), GcError> {
        let mapper = self.mapper();
        let res = mapper
            .resolve(api_version, kind)
            .cloned()
            .ok_or_else(|| GcError::NoMapping {
                api_version: api_version.into(),
                kind: kind.into(),
            })?;
        let api = match (res.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &res.resource),
            _ => Api::all_with(self.client.clone(), &res.resource),
        };
        Ok((api, res))
    }

    async fn get_meta(
        &self,
        id: &ObjectId,
    ) -> Result<Option<PartialObjectMeta<DynamicObject>>, GcError> {
        let (api, _) = self.api_for(&id.api_version, &id.kind, id.namespace.as_deref())?;
        api.get_metadata_opt(&id.name)
            .await
            .map_err(api_err(format!("get {} {}", id.kind, id.name)))
    }

    /// Upstream `attemptToDeleteItem`.
    async fn attempt_to_delete(&self, uid: &str) -> Result<(), GcError> {
        let Some(node) = lock(&self.graph).nodes.get(uid).cloned() else {
            return Ok(());
        };
        if !node.virtual_ && node.being_deleted && !node.deleting_dependents {
            return Ok(());
        }
        if !self.all_synced() {
            return Err(GcError::NotSynced);
        }
        let latest = self.get_meta(&node.id).await?;
        let latest = match latest {
            Some(m) if m.metadata.uid.as_deref() == Some(uid) => m,
            _ => {
                // Gone (or replaced by a namesake): the graph learns it now rather than
                // waiting for the watch, and the dependents get a look.
                let work = lock(&self.graph).remove(uid);
                self.remember_absent(uid);
                self.enqueue(work);
                return Ok(());
            }
        };
        if node.virtual_ {
            // The owner exists; wait for its watch to report it (upstream requeues too).
            return Err(GcError::NotObserved(format!(
                "{} {}",
                node.id.kind, node.id.name
            )));
        }
        let meta = &latest.metadata;
        let deleting = meta.deletion_timestamp.is_some();
        if deleting && util::has_finalizer(meta, FINALIZER_FOREGROUND) {
            return self.process_deleting_dependents(&node.id).await;
        }
        if deleting {
            return Ok(());
        }
        let refs = meta.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let mut classified = Vec::with_capacity(refs.len());
        for r in refs {
            let state = self.classify(&node.id, &r).await?;
            classified.push((r, state));
        }
        let (has_dependents, dependent_deleting) = {
            let graph = lock(&self.graph);
            let deps = graph
                .nodes
                .get(uid)
                .map(|n| n.dependents.clone())
                .unwrap_or_default();
            let deleting = deps
                .iter()
                .any(|d| graph.nodes.get(d).is_some_and(|n| n.deleting_dependents));
            (!deps.is_empty(), deleting)
        };
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        match decide(&classified, has_dependents, dependent_deleting, &finalizers) {
            Decision::Nothing => Ok(()),
            Decision::RemoveRefs(uids) => {
                tracing::debug!(object = %format!("{}/{}", node.id.kind, node.id.name), "garbage collector: removing dangling owner references {uids:?}");
                self.patch_owner_refs(&node.id, |refs| refs.retain(|r| !uids.contains(&r.uid)))
                    .await
            }
            Decision::UnblockThenDeleteForeground => {
                self.patch_owner_refs(&node.id, |refs| {
                    for r in refs.iter_mut().filter(|r| blocks(r)) {
                        r.block_owner_deletion = Some(false);
                    }
                })
                .await?;
                self.delete(&node.id, PropagationPolicy::Foreground).await
            }
            Decision::Delete(policy) => self.delete(&node.id, policy).await,
        }
    }

    /// Classifies one owner reference of `dependent` by a live lookup (upstream `isDangling`).
    async fn classify(
        &self,
        dependent: &ObjectId,
        r: &OwnerReference,
    ) -> Result<OwnerState, GcError> {
        if lock(&self.absent).contains(&r.uid) {
            return Ok(OwnerState::Dangling);
        }
        let mapper = self.mapper();
        let res = mapper
            .resolve(&r.api_version, &r.kind)
            .ok_or_else(|| GcError::NoMapping {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
            })?;
        if res.namespaced && dependent.namespace.is_none() {
            // A cluster-scoped dependent cannot have a namespaced owner: treat it as absent.
            self.record_invalid_namespace(dependent, r).await;
            return Ok(OwnerState::Dangling);
        }
        let owner_ns = if res.namespaced {
            dependent.namespace.clone()
        } else {
            None
        };
        let id = ObjectId {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: owner_ns,
            name: r.name.clone(),
            uid: r.uid.clone(),
        };
        match self.get_meta(&id).await? {
            Some(owner) if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let m = &owner.metadata;
                if m.deletion_timestamp.is_some() && util::has_finalizer(m, FINALIZER_FOREGROUND) {
                    Ok(OwnerState::WaitingForDependents)
                } else {
                    Ok(OwnerState::Solid)
                }
            }
            _ => {
                self.remember_absent(&r.uid);
                Ok(OwnerState::Dangling)
            }
        }
    }

    async fn record_invalid_namespace(&self, dependent: &ObjectId, r: &OwnerReference) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(dependent.api_version.clone()),
            kind: Some(dependent.kind.clone()),
            name: Some(dependent.name.clone()),
            uid: Some(dependent.uid.clone()),
            ..Default::default()
        };
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "OwnerRefInvalidNamespace".into(),
            note: Some(format!(
                "ownerRef [{}/{}, namespace: , name: {}, uid: {}] does not exist in namespace \"\"",
                r.api_version, r.kind, r.name, r.uid
            )),
            action: "GarbageCollect".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!("garbage collector: recording event: {e}");
        }
    }

    /// Upstream `processDeletingDependentsItem`: an owner deleting in the foreground loses its
    /// finalizer once no dependent blocks it; until then its blocking dependents get a look.
    async fn process_deleting_dependents(&self, owner: &ObjectId) -> Result<(), GcError> {
        let (blocking, to_check) = {
            let graph = lock(&self.graph);
            let mut blocking = 0usize;
            let mut to_check = Vec::new();
            for dep in graph
                .nodes
                .get(&owner.uid)
                .map(|n| n.dependents.iter().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                let Some(d) = graph.nodes.get(&dep) else {
                    continue;
                };
                if d.owners.iter().any(|r| r.uid == owner.uid && blocks(r)) {
                    blocking += 1;
                    if !d.deleting_dependents {
                        to_check.push(Work::Delete(dep));
                    }
                }
            }
            (blocking, to_check)
        };
        if blocking == 0 {
            tracing::debug!(object = %format!("{}/{}", owner.kind, owner.name), "garbage collector: no blocking dependents left; removing foregroundDeletion");
            return self.remove_finalizer(owner, FINALIZER_FOREGROUND).await;
        }
        self.enqueue(to_check);
        Ok(())
    }

    /// Upstream `attemptToOrphanWorker`: drop the owner's references from its dependents, then
    /// the `orphan` finalizer.
    async fn attempt_to_orphan(&self, uid: &str) -> Result<(), GcError> {
        if !self.all_synced() {
            return Err(GcError::NotSynced);
        }
        let (owner, dependents) = {
            let graph = lock(&self.graph);
            let Some(owner) = graph.nodes.get(uid) else {
                return Ok(());
            };
            let deps: Vec<ObjectId> = owner
                .dependents
                .iter()
                .filter_map(|d| graph.nodes.get(d))
                .filter(|n| !n.virtual_)
                .map(|n| n.id.clone())
                .collect();
            (owner.id.clone(), deps)
        };
        let results = futures::future::join_all(
            dependents
                .iter()
                .map(|d| self.patch_owner_refs(d, |refs| refs.retain(|r| r.uid != uid))),
        )
        .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        self.remove_finalizer(&owner, FINALIZER_ORPHAN).await
    }

    /// Rewrites the object's owner references with `edit`, pinned to the resourceVersion read,
    /// retrying on conflict. A vanished object is fine: nothing left to patch.
    async fn patch_owner_refs(
        &self,
        id: &ObjectId,
        edit: impl Fn(&mut Vec<OwnerReference>),
    ) -> Result<(), GcError> {
        let (api, _) = self.api_for(&id.api_version, &id.kind, id.namespace.as_deref())?;
        for _ in 0..5 {
            let Some(latest) = api
                .get_metadata_opt(&id.name)
                .await
                .map_err(api_err(format!("get {} {}", id.kind, id.name)))?
            else {
                return Ok(());
            };
            if latest.metadata.uid.as_deref() != Some(id.uid.as_str()) {
                return Ok(());
            }
            let old = latest.metadata.owner_references.clone().unwrap_or_default();
            let mut refs = old.clone();
            edit(&mut refs);
            if refs == old {
                return Ok(());
            }
            let refs_json = if refs.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(refs)
            };
            let patch = serde_json::json!({"metadata": {"resourceVersion": latest.metadata.resource_version, "uid": id.uid, "ownerReferences": refs_json}});
            match api
                .patch_metadata(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => {
                    return Err(api_err(format!(
                        "patch ownerReferences of {} {}",
                        id.kind, id.name
                    ))(e));
                }
            }
        }
        Err(GcError::Conflict(format!("{} {}", id.kind, id.name)))
    }

    /// Removes one finalizer from the object, pinned to the resourceVersion read, retrying on
    /// conflict (upstream `removeFinalizer`).
    async fn remove_finalizer(&self, id: &ObjectId, finalizer: &str) -> Result<(), GcError> {
        let (api, _) = self.api_for(&id.api_version, &id.kind, id.namespace.as_deref())?;
        for _ in 0..5 {
            let Some(latest) = api
                .get_metadata_opt(&id.name)
                .await
                .map_err(api_err(format!("get {} {}", id.kind, id.name)))?
            else {
                return Ok(());
            };
            if latest.metadata.uid.as_deref() != Some(id.uid.as_str()) {
                return Ok(());
            }
            let old = latest.metadata.finalizers.clone().unwrap_or_default();
            let rest: Vec<&String> = old.iter().filter(|f| *f != finalizer).collect();
            if rest.len() == old.len() {
                return Ok(());
            }
            let rest_json = if rest.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(rest)
            };
            let patch = serde_json::json!({"metadata": {"resourceVersion": latest.metadata.resource_version, "uid": id.uid, "finalizers": rest_json}});
            match api
                .patch_metadata(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => {
                    return Err(api_err(format!(
                        "remove finalizer {finalizer} from {} {}",
                        id.kind, id.name
                    ))(e));
                }
            }
        }
        Err(GcError::Conflict(format!("{} {}", id.kind, id.name)))
    }

    /// Deletes the object with a uid precondition, so a namesake created meanwhile survives.
    async fn delete(&self, id: &ObjectId, policy: PropagationPolicy) -> Result<(), GcError> {
        let (api, _) = self.api_for(&id.api_version, &id.kind, id.namespace.as_deref())?;
        tracing::debug!(object = %format!("{}/{}", id.kind, id.name), ?policy, "garbage collector: deleting");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&id.name, &dp).await {
            Ok(_) => Ok(()),
            // Already gone, or the name now belongs to another object (uid precondition).
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(api_err(format!("delete {} {}", id.kind, id.name))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, name: &str, uid: &str) -> ObjectId {
        ObjectId {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn oref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("owner-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn obs(
        uid: &str,
        owners: Vec<OwnerReference>,
        deleting: bool,
        finalizers: &[&str],
    ) -> Observed {
        Observed {
            id: id("ConfigMap", uid, uid),
            owners,
            being_deleted: deleting,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn namespaced(_: &str, _: &str) -> Option<bool> {
        Some(true)
    }

    #[test]
    fn graph_virtual_owner_then_observed() {
        let mut g = Graph::default();
        // A dependent of an unseen owner creates a virtual owner that a worker must check.
        let w = g.observe(obs("d", vec![oref("o", true)], false, &[]), &namespaced);
        assert_eq!(w, vec![Work::Delete("o".into())]);
        assert!(g.nodes.get("o").is_some_and(|n| n.virtual_));
        assert_eq!(g.dependents("o"), vec!["d".to_string()]);
        // The owner is then observed: no longer virtual, dependents kept.
        let w = g.observe(obs("o", vec![], false, &[]), &namespaced);
        assert!(w.is_empty());
        assert!(g.nodes.get("o").is_some_and(|n| !n.virtual_));
        assert_eq!(g.dependents("o"), vec!["d".to_string()]);
    }

    #[test]
    fn graph_transitions() {
        struct Case {
            name: &'static str,
            setup: Vec<Observed>,
            event: Option<Observed>,
            remove: Option<&'static str>,
            want: Vec<Work>,
        }
        let cases = vec![
            Case {
                name: "owner deleted: dependents get a look",
                setup: vec![
                    obs("o", vec![], false, &[]),
                    obs("a", vec![oref("o", true)], false, &[]),
                    obs("b", vec![oref("o", false)], false, &[]),
                ],
                event: None,
                remove: Some("o"),
                want: vec![Work::Delete("a".into()), Work::Delete("b".into())],
            },
            Case {
                name: "orphan finalizer: orphan work",
                setup: vec![
                    obs("o", vec![], false, &[]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("o", vec![], true, &["orphan"])),
                remove: None,
                want: vec![Work::Orphan("o".into())],
            },
            Case {
                name: "starts foreground deletion: dependents then owner",
                setup: vec![
                    obs("o", vec![], false, &[]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("o", vec![], true, &["foregroundDeletion"])),
                remove: None,
                want: vec![Work::Delete("a".into()), Work::Delete("o".into())],
            },
            Case {
                name: "still deleting in foreground: only the owner",
                setup: vec![
                    obs("o", vec![], true, &["foregroundDeletion"]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("o", vec![], true, &["foregroundDeletion", "x"])),
                remove: None,
                want: vec![Work::Delete("o".into())],
            },
            Case {
                name: "blocking dependent of a foreground owner goes away",
                setup: vec![
                    obs("o", vec![], true, &["foregroundDeletion"]),
                    obs("a", vec![oref("o", true)], true, &[]),
                ],
                event: None,
                remove: Some("a"),
                want: vec![Work::Delete("o".into())],
            },
            Case {
                name: "blocking ref unblocked: owner gets a look",
                setup: vec![
                    obs("o", vec![], true, &["foregroundDeletion"]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("a", vec![oref("o", false)], false, &[])),
                remove: None,
                want: vec![Work::Delete("o".into())],
            },
            Case {
                name: "blocking ref removed: owner gets a look",
                setup: vec![
                    obs("o", vec![], true, &["foregroundDeletion"]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("a", vec![], false, &[])),
                remove: None,
                want: vec![Work::Delete("o".into())],
            },
            Case {
                name: "new dependent under a foreground owner is looked at",
                setup: vec![obs("o", vec![], true, &["foregroundDeletion"])],
                event: Some(obs("a", vec![oref("o", true)], false, &[])),
                remove: None,
                want: vec![Work::Delete("a".into())],
            },
            Case {
                name: "plain update: nothing",
                setup: vec![
                    obs("o", vec![], false, &[]),
                    obs("a", vec![oref("o", true)], false, &[]),
                ],
                event: Some(obs("a", vec![oref("o", true)], false, &[])),
                remove: None,
                want: vec![],
            },
            Case {
                name: "removing an unknown uid: nothing",
                setup: vec![],
                event: None,
                remove: Some("zzz"),
                want: vec![],
            },
        ];
        for c in cases {
            let mut g = Graph::default();
            for o in c.setup {
                g.observe(o, &namespaced);
            }
            let mut got = Vec::new();
            if let Some(e) = c.event {
                got.extend(g.observe(e, &namespaced));
            }
            if let Some(uid) = c.remove {
                got.extend(g.remove(uid));
            }
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn graph_owner_ref_removal_updates_dependents() {
        let mut g = Graph::default();
        g.observe(obs("o", vec![], false, &[]), &namespaced);
        g.observe(obs("a", vec![oref("o", true)], false, &[]), &namespaced);
        g.observe(obs("a", vec![], false, &[]), &namespaced);
        assert!(g.dependents("o").is_empty());
        g.remove("a");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn virtual_owner_of_cluster_scoped_kind_has_no_namespace() {
        let mut g = Graph::default();
        g.observe(obs("d", vec![oref("o", false)], false, &[]), &|_, _| {
            Some(false)
        });
        assert_eq!(g.nodes.get("o").map(|n| n.id.namespace.clone()), Some(None));
    }

    #[test]
    fn decisions() {
        use OwnerState::*;
        let r = |uid: &str, s: OwnerState| (oref(uid, true), s);
        let fin = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        struct Case {
            name: &'static str,
            refs: Vec<(OwnerReference, OwnerState)>,
            has_deps: bool,
            dep_deleting: bool,
            finalizers: Vec<String>,
            want: Decision,
        }
        let cases = vec![
            Case {
                name: "no refs",
                refs: vec![],
                has_deps: false,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::Nothing,
            },
            Case {
                name: "all solid",
                refs: vec![r("a", Solid), r("b", Solid)],
                has_deps: false,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::Nothing,
            },
            Case {
                name: "some dangling",
                refs: vec![r("a", Solid), r("b", Dangling)],
                has_deps: false,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::RemoveRefs(vec!["b".into()]),
            },
            Case {
                name: "solid plus waiting",
                refs: vec![
                    r("a", Solid),
                    r("b", Dangling),
                    r("c", WaitingForDependents),
                ],
                has_deps: true,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::RemoveRefs(vec!["b".into(), "c".into()]),
            },
            Case {
                name: "all dangling: background",
                refs: vec![r("a", Dangling)],
                has_deps: true,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::Delete(PropagationPolicy::Background),
            },
            Case {
                name: "all dangling, own orphan finalizer",
                refs: vec![r("a", Dangling)],
                has_deps: false,
                dep_deleting: false,
                finalizers: fin(&["orphan"]),
                want: Decision::Delete(PropagationPolicy::Orphan),
            },
            Case {
                name: "all dangling, own foreground finalizer",
                refs: vec![r("a", Dangling)],
                has_deps: false,
                dep_deleting: false,
                finalizers: fin(&["foregroundDeletion"]),
                want: Decision::Delete(PropagationPolicy::Foreground),
            },
            Case {
                name: "owner waits, we have dependents: foreground",
                refs: vec![r("a", WaitingForDependents)],
                has_deps: true,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::Delete(PropagationPolicy::Foreground),
            },
            Case {
                name: "owner waits, a dependent also deleting dependents: unblock first",
                refs: vec![r("a", WaitingForDependents), r("b", Dangling)],
                has_deps: true,
                dep_deleting: true,
                finalizers: vec![],
                want: Decision::UnblockThenDeleteForeground,
            },
            Case {
                name: "owner waits, no dependents: background",
                refs: vec![r("a", WaitingForDependents)],
                has_deps: false,
                dep_deleting: false,
                finalizers: vec![],
                want: Decision::Delete(PropagationPolicy::Background),
            },
        ];
        for c in cases {
            assert_eq!(
                decide(&c.refs, c.has_deps, c.dep_deleting, &c.finalizers),
                c.want,
                "{}",
                c.name
            );
        }
    }
}
