//! The pod manager: one watch of the pods bound to this node, a worker per pod, and at start
//! (once the first list is in) removal of whatever a previous run left for pods that no longer
//! exist: containers, network sandboxes and pod directories.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::cri;
use super::worker::{Shared, Worker};

pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.cfg.node_name));
    let stream = watcher(api, cfg).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut pods: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut workers: JoinSet<String> = JoinSet::new();
    let mut listing: Option<HashSet<String>> = Some(HashSet::new());
    let mut initial_gc_done = false;
    // Containers a previous run of the agent left, by pod UID: listed once, handed to the
    // workers of their pods (a new pod's worker has nothing to adopt).
    let mut existing: HashMap<String, Vec<cri::Listed>> = HashMap::new();
    for l in shared.cri.list() {
        if let Some(uid) = l.labels.get(cri::LABEL_POD_UID) {
            existing.entry(uid.clone()).or_default().push(l);
        }
    }
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                if let Ok(uid) = done {
                    pods.remove(&uid);
                }
                continue;
            }
            ev = stream.try_next() => ev,
        };
        let ev = match ev {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("watching pods: {e}");
                continue;
            }
        };
        match ev {
            watcher::Event::Init => listing = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if let Some(seen) = listing.as_mut() {
                    seen.insert(uid.clone());
                }
                let pod = Arc::new(pod);
                match pods.get(&uid) {
                    Some(tx) => {
                        tx.send_replace(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod.clone()));
                        pods.insert(uid.clone(), tx);
                        let worker = Worker::new(shared.clone(), pod, rx);
                        let adopt = existing.remove(&uid).unwrap_or_default();
                        let stop = shutdown.clone();
                        workers.spawn(async move {
                            worker.run(adopt, stop).await;
                            uid
                        });
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| pods.get(u)) {
                    tx.send_replace(None);
                }
            }
            watcher::Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                // Pods that vanished while the watch was down.
                for (uid, tx) in &pods {
                    if !seen.contains(uid) {
                        tx.send_replace(None);
                    }
                }
                if !initial_gc_done {
                    initial_gc_done = true;
                    remove_orphans(&shared, &seen).await;
                }
            }
        }
    }
    // Shutdown: workers leave containers running.
    while workers.join_next().await.is_some() {}
}

/// Removes containers, sandboxes and pod directories of pods that are not bound here anymore.
async fn remove_orphans(shared: &Shared, live: &HashSet<String>) {
    for l in shared.cri.list() {
        let owner = l.labels.get(cri::LABEL_POD_UID);
        if owner.is_none_or(|u| !live.contains(u)) {
            tracing::info!(container = %l.id, "removing a container whose pod is gone");
            shared.cri.remove(&l.id);
        }
    }
    for uid in shared.net.list() {
        if !live.contains(&uid)
            && let Err(e) = shared.net.teardown(&uid).await
        {
            tracing::warn!(pod_uid = %uid, "removing an orphaned pod network: {e}");
        }
    }
    let pods_dir = shared.cfg.agent_dir.join("pods");
    for e in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if !live.contains(&uid)
            && let Err(err) = super::volumes::remove_pod_dir(&e.path())
        {
            tracing::warn!(pod_uid = %uid, "removing an orphaned pod directory: {err}");
        }
    }
}
