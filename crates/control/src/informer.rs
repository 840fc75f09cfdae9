//! Shared informers, like client-go's SharedInformerFactory: one watch and one cache per kind
//! (and selector) for the whole controller manager, fanned out to every controller that cares.
//! Before this each controller ran its own pod watch, so every pod change was sent, parsed and
//! cached a dozen times over.
//!
//! Subscribers get the changes in order, each on its own bounded channel: a slow subscriber
//! holds the informer back (backpressure) rather than missing changes. A new subscriber first
//! gets the cache as it stands (`Init`, `InitApply` for each object, `InitDone`), consistent
//! with the changes that follow; one joining during a (re)list gets it when the list is done.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt as _};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a subscriber sees: a (re)list of the cache, then live changes.
pub enum Change<K> {
    /// A full list follows; objects not in it before `InitDone` no longer exist.
    Init,
    InitApply(Arc<K>),
    InitDone,
    /// Added or modified; `old` is the cached version it replaced.
    Apply {
        old: Option<Arc<K>>,
        new: Arc<K>,
    },
    Delete(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Init => Change::Init,
            Change::InitApply(o) => Change::InitApply(o.clone()),
            Change::InitDone => Change::InitDone,
            Change::Apply { old, new } => Change::Apply {
                old: old.clone(),
                new: new.clone(),
            },
            Change::Delete(o) => Change::Delete(o.clone()),
        }
    }
}

impl<K> Change<K> {
    /// The object the change concerns (the deleted one for `Delete`).
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Change::InitApply(o) | Change::Apply { new: o, .. } | Change::Delete(o) => Some(o),
            Change::Init | Change::InitDone => None,
        }
    }
}

/// How many changes may wait for one subscriber before the informer waits for it.
const SUBSCRIBER_BUFFER: usize = 4096;

struct Subscribers<K> {
    senders: Vec<mpsc::Sender<Change<K>>>,
    /// Joined during a (re)list: they get the whole cache once it is complete.
    pending: Vec<mpsc::Sender<Change<K>>>,
    /// Between `Init` and `InitDone`.
    listing: bool,
    synced: bool,
}

/// The cache as a relist: `Init`, each object, `InitDone`.
fn replay<K>(objects: Vec<Arc<K>>) -> Vec<Change<K>> {
    std::iter::once(Change::Init)
        .chain(objects.into_iter().map(Change::InitApply))
        .chain(std::iter::once(Change::InitDone))
        .collect()
}

/// One kind's watch, cache and subscribers.
pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subs: Arc<Mutex<Subscribers<K>>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            subs: self.subs.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn start(api: Api<K>, wc: watcher::Config, shutdown: CancellationToken) -> Self {
        let (store, mut writer) = reflector::store::<K>();
        let subs = Arc::new(Mutex::new(Subscribers {
            senders: Vec::new(),
            pending: Vec::new(),
            listing: false,
            synced: false,
        }));
        let (cache, shared) = (store.clone(), subs.clone());
        tokio::spawn(async move {
            // Like client-go's informers with a transform, the cache drops managedFields:
            // no controller reads them, and as nested maps they were half of a cached pod.
            let mut events = watcher(api, wc)
                .default_backoff()
                .modify(|o| o.meta_mut().managed_fields = None)
                .boxed();
            let mut before_relist: Option<Vec<Arc<K>>> = None;
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = events.next() => next,
                };
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        tracing::debug!("watch of {} failed, retrying: {e}", K::plural(&()));
                        continue;
                    }
                    None => return,
                };
                // Apply to the cache and pick the receivers under the lock, so a subscriber
                // joining now sees each change either in its snapshot or on its channel.
                let (changes, senders, joined) = {
                    let mut subs = lock(&shared);
                    let mut changes = Vec::with_capacity(1);
                    let mut joined = Vec::new();
                    match &event {
                        watcher::Event::Init => {
                            before_relist = Some(cache.state());
                            changes.push(Change::Init);
                            subs.listing = true;
                        }
                        watcher::Event::InitApply(o) => {
                            changes.push(Change::InitApply(Arc::new(o.clone())));
                        }
                        watcher::Event::InitDone => {}
                        watcher::Event::Apply(o) => changes.push(Change::Apply {
                            old: cache.get(&ObjectRef::from_obj(o)),
                            new: Arc::new(o.clone()),
                        }),
                        watcher::Event::Delete(o) => {
                            changes.push(Change::Delete(Arc::new(o.clone())))
                        }
                    }
                    writer.apply_watcher_event(&event);
                    if matches!(event, watcher::Event::InitDone) {
                        // Objects deleted while the watch was down vanish in the relist;
                        // report them as deletions so subscribers never miss one.
                        for gone in before_relist.take().unwrap_or_default() {
                            if cache.get(&ObjectRef::from_obj(gone.as_ref())).is_none() {
                                changes.push(Change::Delete(gone));
                            }
                        }
                        changes.push(Change::InitDone);
                        subs.listing = false;
                        subs.synced = true;
                        joined = std::mem::take(&mut subs.pending);
                    }
                    subs.senders.retain(|s| !s.is_closed());
                    let senders = subs.senders.clone();
                    subs.senders.extend(joined.iter().cloned());
                    (changes, senders, joined)
                };
                for change in changes {
                    for s in &senders {
                        let _ = s.send(change.clone()).await;
                    }
                }
                if !joined.is_empty() {
                    for change in replay(cache.state()) {
                        for s in &joined {
                            let _ = s.send(change.clone()).await;
                        }
                    }
                }
            }
        });
        Informer { store, subs }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// The shared cache (complete once the first list is done).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on, preceded by the cache as it stands when the informer has
    /// already listed.
    pub fn subscribe(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let snapshot = {
            let mut subs = lock(&self.subs);
            if subs.listing {
                // Mid-list: the rest of this list would be partial; the informer sends the
                // whole cache when the list is done.
                subs.pending.push(tx);
                None
            } else {
                subs.senders.push(tx);
                subs.synced.then(|| self.store.state())
            }
        };
        let replay = snapshot.map(replay).unwrap_or_default();
        futures::stream::iter(replay).chain(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }))
    }

    /// The objects of every change (for kube-runtime controllers' `owns`/`watches` triggers).
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe()
            .filter_map(|c| futures::future::ready(c.object().cloned()))
    }
}

/// The informers of one controller manager term, by kind and selector.
#[derive(Default)]
pub struct Informers {
    started: Mutex<HashMap<(TypeId, String), Box<dyn Any + Send + Sync>>>,
}

impl Informers {
    /// The informer of `K` over the whole cluster with `wc`'s selectors, started on first use.
    pub fn get<K>(
        &self,
        client: &kube::Client,
        wc: watcher::Config,
        shutdown: &CancellationToken,
    ) -> Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let key = (
            TypeId::of::<K>(),
            format!("{:?}|{:?}", wc.label_selector, wc.field_selector),
        );
        let mut started = lock(&self.started);
        if let Some(i) = started
            .get(&key)
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return i.clone();
        }
        let informer = Informer::start(Api::<K>::all(client.clone()), wc, shutdown.clone());
        started.insert(key, Box::new(informer.clone()));
        informer
    }
}
