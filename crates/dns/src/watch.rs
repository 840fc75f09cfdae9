//! Feeds the index from watches of Namespaces, Services and EndpointSlices (all namespaces),
//! one object per change: no rebuild of the whole index on any event.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use control::informer::{Change, Informers};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::index::Index;

/// The kinds watched; the index is synced once each has listed.
const KINDS: usize = 3;

/// Tracks which watches have delivered their first list.
pub(crate) struct Listed {
    listed: AtomicUsize,
    pub(crate) synced: Arc<AtomicBool>,
    pub(crate) notify: Notify,
}

impl Listed {
    pub(crate) fn new() -> Listed {
        Listed {
            listed: AtomicUsize::new(0),
            synced: Arc::new(AtomicBool::new(false)),
            notify: Notify::new(),
        }
    }

    fn listed_one(&self) {
        if self.listed.fetch_add(1, Ordering::AcqRel) + 1 == KINDS {
            self.synced.store(true, Ordering::Release);
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Subscribes to `informers`' Namespaces, Services and EndpointSlices (starting those not yet
/// started, to run until `informers_shutdown`) and feeds the index on `tracker` until
/// `shutdown`.
pub(crate) fn start(
    informers: &Informers,
    informers_shutdown: &CancellationToken,
    client: &kube::Client,
    index: &Arc<RwLock<Index>>,
    sync: &Arc<Listed>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    feed::<Namespace>(
        informers,
        informers_shutdown,
        client,
        index,
        sync,
        tracker,
        shutdown,
        Index::apply_namespace,
        Index::delete_namespace,
    );
    feed::<Service>(
        informers,
        informers_shutdown,
        client,
        index,
        sync,
        tracker,
        shutdown,
        Index::apply_service,
        Index::delete_service,
    );
    feed::<EndpointSlice>(
        informers,
        informers_shutdown,
        client,
        index,
        sync,
        tracker,
        shutdown,
        Index::apply_slice,
        Index::delete_slice,
    );
}

#[allow(clippy::too_many_arguments)]
fn feed<K>(
    informers: &Informers,
    informers_shutdown: &CancellationToken,
    client: &kube::Client,
    index: &Arc<RwLock<Index>>,
    sync: &Arc<Listed>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    apply: fn(&mut Index, &K),
    delete: fn(&mut Index, &K),
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let informer = informers.get::<K>(client, watcher::Config::default(), informers_shutdown);
    let mut changes = Box::pin(informer.subscribe());
    let (index, sync, shutdown) = (index.clone(), sync.clone(), shutdown.clone());
    tracker.spawn(async move {
        let mut listed = false;
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.next() => match c { Some(c) => c, None => return },
            };
            let mut index = index
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &change {
                // Objects missing from a relist arrive as deletions before `InitDone`.
                Change::Init => {}
                Change::InitApply(o) | Change::Apply { new: o, .. } => apply(&mut index, o),
                Change::Delete(o) => delete(&mut index, o),
                Change::InitDone => {
                    if !listed {
                        listed = true;
                        sync.listed_one();
                    }
                }
            }
        }
    });
}
