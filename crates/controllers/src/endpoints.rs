//! Endpoints controller (upstream pkg/controller/endpoint): for every Service with a selector,
//! keeps a core/v1 Endpoints object of the same name listing the addresses of the pods it
//! selects, ready ones in `addresses` and the rest in `notReadyAddresses`.
//!
//! Also home of the small informer/work-queue kit and the pod-selection helpers that the
//! EndpointSlice, ServiceAccount and node lifecycle controllers share with this one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::Context;

/// Annotation with the time of the change that triggered the last write (upstream
/// `v1.EndpointsLastChangeTriggerTime`).
pub(crate) const LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// Set when an Endpoints object had to be truncated to [`MAX_CAPACITY`] addresses.
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Label marking the Endpoints/EndpointSlices of a headless Service.
pub(crate) const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints created by leader election in old clusters: never ours to delete.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Upstream truncates an Endpoints object past this many addresses.
const MAX_CAPACITY: usize = 1000;
/// How often every Service is reconciled even without events.
const RESYNC_PERIOD: Duration = Duration::from_secs(300);

/// Watch-fed caches and a deduplicating retrying work queue: the client-go informer and
/// workqueue pattern, shared by this file's siblings.
pub(crate) mod kit {
    use std::collections::{BTreeSet, HashMap};
    use std::fmt::Debug;
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use kube::Resource;
    use kube::runtime::reflector::Store;
    use kube::runtime::watcher;
    use serde::de::DeserializeOwned;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    pub(crate) use control::informer::Change;

    /// The controller manager's shared cache of `K` (cluster-wide, with `wc`'s selectors),
    /// calling `on_event(old, change)` for each change after the cache has it (`old` is the
    /// cached object the change replaces or deletes). Deletions that happen while the watch is
    /// down are reported when it relists, so handlers never miss one.
    pub(crate) fn informer<K, F>(
        ctx: &crate::Context,
        wc: watcher::Config,
        mut on_event: F,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: FnMut(Option<Arc<K>>, &Change<K>) + Send + 'static,
    {
        let informer = ctx.informers.get::<K>(&ctx.client, wc, &ctx.shutdown);
        let mut changes = Box::pin(informer.subscribe());
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = changes.next() => match c { Some(c) => c, None => return },
                };
                let old = match &change {
                    Change::Apply { old, .. } => old.clone(),
                    Change::Delete(o) => Some(o.clone()),
                    _ => None,
                };
                on_event(old, &change);
            }
        });
        informer.store()
    }

    /// The producer side of a work queue of `namespace/name` (or `name`) keys.
    #[derive(Clone)]
    pub(crate) struct Queue(mpsc::UnboundedSender<String>);

    impl Queue {
        pub(crate) fn add(&self, key: impl Into<String>) {
            // A closed queue means the controller is stopping; dropping the key is right.
            let _ = self.0.send(key.into());
        }

        /// Adds `key` after `delay` unless `shutdown` comes first.
        pub(crate) fn add_after(&self, key: String, delay: Duration, shutdown: &CancellationToken) {
            let (queue, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => queue.add(key),
                }
            });
        }
    }

    pub(crate) fn queue() -> (Queue, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue(tx), rx)
    }

    /// Retry delay after `failures` consecutive failures: 100ms doubling up to ~100s.
    pub(crate) fn backoff(failures: u32) -> Duration {
        Duration::from_millis(100) * 2u32.pow(failures.saturating_sub(1).min(10))
    }

    /// Processes queued keys one at a time until `shutdown`; keys queued while one is being
    /// processed are deduplicated. A failed key is retried with exponential backoff.
    pub(crate) async fn work<F, Fut>(
        name: &'static str,
        queue: Queue,
        mut rx: mpsc::UnboundedReceiver<String>,
        shutdown: &CancellationToken,
        mut sync: F,
    ) where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut failures: HashMap<String, u32> = HashMap::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                key = rx.recv() => match key { Some(key) => key, None => return },
            };
            let mut batch = BTreeSet::from([first]);
            while let Ok(key) = rx.try_recv() {
                batch.insert(key);
            }
            for key in batch {
                if shutdown.is_cancelled() {
                    return;
                }
                match sync(key.clone()).await {
                    Ok(()) => {
                        failures.remove(&key);
                    }
                    Err(e) => {
                        let n = failures.entry(key.clone()).or_insert(0);
                        *n += 1;
                        let delay = backoff(*n);
                        if *n > 3 {
                            tracing::warn!(controller = name, %key, "sync failed, retrying in {delay:?}: {e:#}");
                        } else {
                            tracing::debug!(controller = name, %key, "sync failed, retrying in {delay:?}: {e:#}");
                        }
                        queue.add_after(key, delay, shutdown);
                    }
                }
            }
        }
    }

    /// Waits until every cache has its first full list (or `shutdown`); false on shutdown.
    pub(crate) async fn wait_synced<K>(stores: &[&Store<K>], shutdown: &CancellationToken) -> bool
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        // Several controllers wait on one shared store, and kube-runtime's readiness signal
        // wakes only the last waiter registered; waiting in short rounds re-polls it.
        for store in stores {
            loop {
                let round =
                    tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready());
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    ready = round => match ready {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return false,
                        Err(_) => continue,
                    },
                }
            }
        }
        true
    }

    /// `namespace/name` of a namespaced object.
    pub(crate) fn key<K: Resource>(obj: &K) -> String {
        let meta = obj.meta();
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    }

    /// Splits a `namespace/name` key.
    pub(crate) fn split(key: &str) -> anyhow::Result<(&str, &str)> {
        key.split_once('/')
            .ok_or_else(|| anyhow::anyhow!("malformed queue key {key:?}"))
    }

    /// The object carried by a change, if any.
    pub(crate) fn object<K>(change: &Change<K>) -> Option<&K> {
        change.object().map(|o| o.as_ref())
    }

    /// Remembers the resourceVersion each of our writes produced, so a sync that reads a cache
    /// older than our own last write waits for the cache instead of acting on stale data (and
    /// e.g. creating a second EndpointSlice for endpoints it already placed). Upstream keeps
    /// the same kind of tracker (`EndpointSliceTracker`, `staleEndpointsTracker`).
    #[derive(Default)]
    pub(crate) struct WriteTracker {
        /// owner key → object name → what the cache must show before we act again.
        expected: HashMap<String, HashMap<String, (Expect, tokio::time::Instant)>>,
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expect {
        AtLeast(u64),
        Gone,
    }

    /// An expectation the cache has not met after this long is dropped: whatever happened
    /// (a missed event), acting on the cache beats waiting forever.
    const EXPECTATION_TTL: Duration = Duration::from_secs(30);

    fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<u64> {
        meta.resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
    }

    impl WriteTracker {
        pub(crate) fn wrote(
            &mut self,
            owner: &str,
            meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        ) {
            if let (Some(name), Some(rv)) = (meta.name.clone(), rv_of(meta)) {
                let now = tokio::time::Instant::now();
                self.expected
                    .entry(owner.to_string())
                    .or_default()
                    .insert(name, (Expect::AtLeast(rv), now));
            }
        }

        pub(crate) fn deleted(&mut self, owner: &str, name: &str) {
            let now = tokio::time::Instant::now();
            self.expected
                .entry(owner.to_string())
                .or_default()
                .insert(name.to_string(), (Expect::Gone, now));
        }

        /// The watch reported `name` deleted: whatever we expected of it is settled.
        pub(crate) fn observed_deletion(&mut self, owner: &str, name: &str) {
            if let Some(names) = self.expected.get_mut(owner) {
                names.remove(name);
                if names.is_empty() {
                    self.expected.remove(owner);
                }
            }
        }

        pub(crate) fn forget(&mut self, owner: &str) {
            self.expected.remove(owner);
        }

        /// Whether `lookup(name)` (the cached object's metadata) still lags one of our writes
        /// for `owner`. Expectations the cache has met are dropped.
        pub(crate) fn is_stale<'a>(
            &mut self,
            owner: &str,
            lookup: impl Fn(
                &str,
            )
                -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
        ) -> bool {
            let Some(names) = self.expected.get_mut(owner) else {
                return false;
            };
            names.retain(|name, (expect, since)| {
                since.elapsed() < EXPECTATION_TTL
                    && match (*expect, lookup(name)) {
                        (Expect::Gone, None) => false,
                        (Expect::Gone, Some(_)) => true,
                        (Expect::AtLeast(_), None) => true,
                        (Expect::AtLeast(rv), Some(meta)) => {
                            rv_of(meta).is_some_and(|have| have < rv)
                        }
                    }
            });
            let stale = !names.is_empty();
            if !stale {
                self.expected.remove(owner);
            }
            stale
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pod selection helpers shared with the EndpointSlice controller.

/// The Service's selector, or `None` when it selects nothing (no selector: endpoints are
/// managed out of band). An empty map is the same as none: the API never stores one.
pub(crate) fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

pub(crate) fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// Whether the Service has a cluster IP (not headless).
pub(crate) fn is_service_ip_set(svc: &Service) -> bool {
    let ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or_default();
    !ip.is_empty() && ip != "None"
}

pub(crate) fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

pub(crate) fn pod_ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's IPs: `status.podIPs`, or `status.podIP` alone when the list is missing.
pub(crate) fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return vec![];
    };
    let listed: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .iter()
        .filter(|ip| !ip.is_empty())
        .cloned()
        .collect()
}

pub(crate) fn is_ipv6(ip: &str) -> bool {
    ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv6())
}

/// Upstream `ShouldPodBeInEndpoints`: not terminal, has an IP, and not terminating unless
/// `include_terminating`.
pub(crate) fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if is_pod_terminal(pod) || pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// Upstream `ShouldSetHostname`: the pod's hostname is published when its subdomain names
/// this Service.
pub(crate) fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let spec = pod.spec.as_ref();
    let hostname = spec.and_then(|s| s.hostname.as_deref()).unwrap_or_default();
    !hostname.is_empty()
        && spec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace
}

/// Upstream `FindPort`: a numeric targetPort is used as is; a named one is looked up among
/// the container ports (and restartable init containers) with the Service port's protocol.
pub(crate) fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

pub(crate) fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Whether a pod change can alter endpoints (`.0`) or which Services select it (`.1`)
/// (upstream `podEndpointsChanged`).
fn pod_endpoints_changed(old: &Pod, new: &Pod) -> (bool, bool) {
    let host = |p: &Pod| {
        p.spec
            .as_ref()
            .map(|s| (s.hostname.clone(), s.subdomain.clone()))
    };
    let labels_changed = old.metadata.labels != new.metadata.labels || host(old) != host(new);
    let changed = old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        || is_pod_ready(old) != is_pod_ready(new)
        || pod_ips(old) != pod_ips(new)
        || is_pod_terminal(old) != is_pod_terminal(new)
        || old.spec.as_ref().and_then(|s| s.node_name.as_ref())
            != new.spec.as_ref().and_then(|s| s.node_name.as_ref());
    (changed, labels_changed)
}

/// Keys of the Services whose endpoints may change because of a pod event (upstream
/// `GetServicesToUpdateOnPodChange`): those selecting the pod before or after the change.
pub(crate) fn services_for_pod_event(
    services: &Store<Service>,
    old: Option<&Pod>,
    event: &kit::Change<Pod>,
) -> BTreeSet<String> {
    let Some(new) = kit::object(event) else {
        return BTreeSet::new();
    };
    let deleted = matches!(event, kit::Change::Delete(_));
    let mut label_sets = vec![];
    match old {
        Some(old) if !deleted => {
            if old.metadata.resource_version == new.metadata.resource_version {
                return BTreeSet::new();
            }
            let (changed, labels_changed) = pod_endpoints_changed(old, new);
            if !changed && !labels_changed {
                return BTreeSet::new();
            }
            label_sets.push(new.metadata.labels.clone().unwrap_or_default());
            if labels_changed {
                label_sets.push(old.metadata.labels.clone().unwrap_or_default());
            }
        }
        _ => label_sets.push(new.metadata.labels.clone().unwrap_or_default()),
    }
    let ns = new.metadata.namespace.as_deref();
    services
        .state()
        .iter()
        .filter(|svc| svc.metadata.namespace.as_deref() == ns)
        .filter(|svc| {
            service_selector(svc)
                .is_some_and(|sel| label_sets.iter().any(|l| selector_matches(sel, l)))
        })
        .map(|svc| kit::key(svc.as_ref()))
        .collect()
}

/// Pods of the Service's namespace matching its selector.
pub(crate) fn selected_pods(
    pods: &Store<Pod>,
    svc: &Service,
    selector: &BTreeMap<String, String>,
) -> Vec<Arc<Pod>> {
    let ns = svc.metadata.namespace.as_deref();
    let mut selected: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| {
            selector_matches(
                selector,
                p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected
}

/// Upstream `TriggerTimeTracker`: the earliest time among the pod Ready transitions and
/// Service creation that changed since the previous sync of the Service, for the
/// last-change-trigger-time annotation.
#[derive(Default)]
pub(crate) struct TriggerTimeTracker {
    services: HashMap<String, ServiceTriggerState>,
}

#[derive(Default)]
struct ServiceTriggerState {
    pods: HashMap<String, jiff::Timestamp>,
    service: Option<jiff::Timestamp>,
}

impl TriggerTimeTracker {
    pub(crate) fn compute(
        &mut self,
        key: &str,
        svc: &Service,
        pods: &[Arc<Pod>],
    ) -> Option<jiff::Timestamp> {
        let previous = self.services.remove(key);
        let mut state = ServiceTriggerState::default();
        let mut min: Option<jiff::Timestamp> = None;
        let mut note = |t: jiff::Timestamp| min = Some(min.map_or(t, |m| m.min(t)));
        for pod in pods {
            let Some(t) = pod_ready_condition(pod)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
            else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            if previous
                .as_ref()
                .is_none_or(|p| p.pods.get(&name) != Some(&t))
            {
                note(t);
            }
            state.pods.insert(name, t);
        }
        if let Some(t) = svc.metadata.creation_timestamp.as_ref().map(|t| t.0) {
            if previous.as_ref().is_none_or(|p| p.service != Some(t)) {
                note(t);
            }
            state.service = Some(t);
        }
        self.services.insert(key.to_string(), state);
        min
    }

    pub(crate) fn forget(&mut self, key: &str) {
        self.services.remove(key);
    }
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.RFC3339Nano` prints it.
pub(crate) fn format_trigger_time(t: jiff::Timestamp) -> String {
    t.to_string()
}

// ---------------------------------------------------------------------------------------------
// Desired Endpoints.

/// Upstream `podToEndpointAddressForService`: the pod IP of the Service's (first) IP family.
fn endpoint_address(svc: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let ips = pod_ips(pod);
    let spec = svc.spec.as_ref();
    let want_v6 = match spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        Some(family) => family == "IPv6",
        None if is_service_ip_set(svc) => spec
            .and_then(|s| s.cluster_ip.as_deref())
            .is_some_and(is_ipv6),
        None => ips.first().is_some_and(|ip| is_ipv6(ip)),
    };
    let ip = ips.into_iter().find(|ip| is_ipv6(ip) == want_v6)?;
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let hostname = if should_set_hostname(pod, svc) {
        pod.spec.as_ref().and_then(|s| s.hostname.clone())
    } else {
        None
    };
    Some(EndpointAddress {
        ip,
        node_name,
        hostname,
        target_ref: Some(pod_ref(pod)),
    })
}

/// An address's identity: IP and target UID (upstream `addressKey`).
type AddressKey = (String, String);
/// A port's identity: name, number, protocol, appProtocol.
type PortKey = (String, i32, String, String);
/// An address with whether it is ready.
type ReadyAddress = (EndpointAddress, bool);
/// Addresses by identity, with whether they are ready.
type AddressSet = BTreeMap<AddressKey, ReadyAddress>;
/// Ports grouped by the exact set of (address, ready) offering them.
type PortGroups = BTreeMap<Vec<(AddressKey, bool)>, (Vec<EndpointPort>, Vec<ReadyAddress>)>;

fn address_key(a: &EndpointAddress) -> AddressKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default(),
    )
}

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_default(),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

/// The subsets for a Service and its selected pods, packed like upstream `RepackSubsets`:
/// addresses offering the same set of ports share one subset. Deterministically sorted.
pub(crate) fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_ports: &[ServicePort] = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    // (port or None for a headless service without ports) → address key → (address, ready)
    let mut by_port: BTreeMap<Option<PortKey>, (Option<EndpointPort>, AddressSet)> =
        BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(addr) = endpoint_address(svc, pod) else {
            continue;
        };
        let ready = publish_not_ready || is_pod_ready(pod);
        let mut add = |port: Option<EndpointPort>| {
            let entry = by_port
                .entry(port.as_ref().map(port_key))
                .or_insert_with(|| (port, BTreeMap::new()));
            let slot = entry
                .1
                .entry(address_key(&addr))
                .or_insert_with(|| (addr.clone(), ready));
            // An address ready for a port stays ready (upstream keeps the ready state).
            slot.1 |= ready;
        };
        if svc_ports.is_empty() {
            if is_headless(svc) {
                add(None);
            }
            continue;
        }
        for sp in svc_ports {
            let Some(port) = find_port(pod, sp) else {
                continue;
            };
            add(Some(EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            }));
        }
    }
    // Group ports by the exact set of (address, ready) offering them.
    let mut by_addresses: PortGroups = BTreeMap::new();
    for (_, (port, addrs)) in by_port {
        let signature: Vec<_> = addrs
            .iter()
            .map(|(k, (_, ready))| (k.clone(), *ready))
            .collect();
        let entry = by_addresses
            .entry(signature)
            .or_insert_with(|| (vec![], addrs.into_values().collect()));
        entry.0.extend(port);
    }
    let mut subsets: Vec<EndpointSubset> = by_addresses
        .into_values()
        .map(|(ports, addrs)| {
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|(_, r)| *r);
            EndpointSubset {
                addresses: non_empty(ready.into_iter().map(|(a, _)| a).collect()),
                not_ready_addresses: non_empty(not_ready.into_iter().map(|(a, _)| a).collect()),
                ports: non_empty(ports),
            }
        })
        .collect();
    sort_subsets(&mut subsets);
    subsets
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() { None } else { Some(v) }
}

/// A canonical order, so equal content compares equal regardless of who wrote it.
fn sort_subsets(subsets: &mut [EndpointSubset]) {
    for s in subsets.iter_mut() {
        for list in [&mut s.addresses, &mut s.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            list.sort_by_key(address_key);
        }
        if let Some(ports) = s.ports.as_mut() {
            ports.sort_by_key(port_key);
        }
    }
    subsets.sort_by_cached_key(|s| serde_json::to_string(s).unwrap_or_default());
}

/// Equality ignoring the pods' resourceVersions in targetRefs (upstream
/// `endpointSubsetsEqualIgnoreResourceVersion`) and nil-versus-empty lists.
fn subsets_equal(a: &[EndpointSubset], b: &[EndpointSubset]) -> bool {
    let normalize = |subsets: &[EndpointSubset]| {
        let mut v = subsets.to_vec();
        for s in v.iter_mut() {
            for list in [&mut s.addresses, &mut s.not_ready_addresses, &mut None] {
                if let Some(addrs) = list.as_mut() {
                    for a in addrs.iter_mut() {
                        if let Some(r) = a.target_ref.as_mut() {
                            r.resource_version = None;
                        }
                    }
                }
                if list.as_ref().is_some_and(Vec::is_empty) {
                    *list = None;
                }
            }
            if s.ports.as_ref().is_some_and(Vec::is_empty) {
                s.ports = None;
            }
        }
        sort_subsets(&mut v);
        v
    };
    normalize(a) == normalize(b)
}

fn count_addresses(subsets: &[EndpointSubset]) -> (usize, usize) {
    subsets.iter().fold((0, 0), |(r, n), s| {
        (
            r + s.addresses.as_ref().map_or(0, Vec::len),
            n + s.not_ready_addresses.as_ref().map_or(0, Vec::len),
        )
    })
}

/// Upstream `truncateEndpoints`: keeps at most [`MAX_CAPACITY`] addresses, ready ones first,
/// spread over the subsets in proportion to their size. True when something was dropped.
fn truncate(subsets: &mut [EndpointSubset], max_capacity: usize) -> bool {
    let (total_ready, total_not_ready) = count_addresses(subsets);
    if total_ready + total_not_ready <= max_capacity {
        return false;
    }
    let truncate_ready = total_ready > max_capacity;
    let (max, num_total) = if truncate_ready {
        (max_capacity, total_ready)
    } else {
        (max_capacity - total_ready, total_not_ready)
    };
    let mut can_be_added = max;
    for s in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            &s.addresses
        } else {
            &s.not_ready_addresses
        }
        .as_ref()
        .map_or(0, Vec::len);
        let to_be_added = ((in_subset as f64 / num_total as f64) * max as f64).ceil() as usize;
        let to_be_added = to_be_added.min(can_be_added);
        if truncate_ready {
            if let Some(a) = s.addresses.as_mut() {
                a.truncate(to_be_added);
            }
            s.not_ready_addresses = None;
            can_be_added -= s.addresses.as_ref().map_or(0, Vec::len);
        } else {
            if let Some(a) = s.not_ready_addresses.as_mut() {
                a.truncate(to_be_added);
            }
            can_be_added -= s.not_ready_addresses.as_ref().map_or(0, Vec::len);
        }
    }
    true
}

/// Service labels plus the headless marker, as upstream labels an Endpoints object.
fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_service_ip_set(svc) {
        labels.remove(HEADLESS_LABEL);
    } else {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

// ---------------------------------------------------------------------------------------------
// The controller.

struct Controller {
    ctx: Arc<Context>,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    triggers: Mutex<TriggerTimeTracker>,
    writes: Arc<Mutex<kit::WriteTracker>>,
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let (queue, rx) = kit::queue();

    let services = {
        let queue = queue.clone();
        kit::informer::<Service, _>(&ctx, watcher::Config::default(), move |_, ev| {
            if let Some(svc) = kit::object(ev) {
                queue.add(kit::key(svc));
            }
        })
    };
    let pods = {
        let (queue, services) = (queue.clone(), services.clone());
        kit::informer::<Pod, _>(&ctx, watcher::Config::default(), move |old, ev| {
            for key in services_for_pod_event(&services, old.as_deref(), ev) {
                queue.add(key);
            }
        })
    };
    let writes = Arc::new(Mutex::new(kit::WriteTracker::default()));
    let endpoints = {
        let (queue, writes) = (queue.clone(), writes.clone());
        kit::informer::<Endpoints, _>(&ctx, watcher::Config::default(), move |_, ev| match ev {
            // A deleted Endpoints object is recreated if its Service still wants one.
            kit::Change::Delete(ep) => {
                let key = kit::key(ep.as_ref());
                lock(&writes)
                    .observed_deletion(&key, ep.metadata.name.as_deref().unwrap_or_default());
                queue.add(key);
            }
            // Listing finds Endpoints left behind by Services deleted while we were down
            // (upstream `checkLeftoverEndpoints`).
            kit::Change::InitApply(ep) if !ep.annotations().contains_key(LEADER_ANNOTATION) => {
                queue.add(kit::key(ep.as_ref()))
            }
            _ => {}
        })
    };

    if !kit::wait_synced(&[&services], &shutdown).await
        || !kit::wait_synced(&[&pods], &shutdown).await
        || !kit::wait_synced(&[&endpoints], &shutdown).await
    {
        return Ok(());
    }
    spawn_resync(queue.clone(), services.clone(), shutdown.clone());

    let ctl = Arc::new(Controller {
        ctx,
        services,
        pods,
        endpoints,
        triggers: Mutex::default(),
        writes,
    });
    kit::work("endpoints", queue, rx, &shutdown, |key| {
        let ctl = ctl.clone();
        async move { ctl.sync(&key).await }
    })
    .await;
    Ok(())
}

/// Periodically requeues every Service, a safety net under the event-driven syncs.
pub(crate) fn spawn_resync(
    queue: kit::Queue,
    services: Store<Service>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESYNC_PERIOD);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for svc in services.state() {
                queue.add(kit::key(svc.as_ref()));
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the API refused a create because the namespace is being deleted.
pub(crate) fn is_namespace_terminating(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 403
                && (s.message.contains("is being terminated")
                    || s.details.as_ref().is_some_and(|d| {
                        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
                    }))
        }
        _ => false,
    }
}

pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Controller {
    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let (ns, name) = kit::split(key)?;
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), ns);
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The Service is gone: so are its Endpoints (upstream deletes by name; Endpoints
            // carry no ownerReference).
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting endpoints {key}")),
            }
            lock(&self.triggers).forget(key);
            lock(&self.writes).forget(key);
            return Ok(());
        };
        if is_external_name(&svc) {
            return Ok(());
        }
        let Some(selector) = service_selector(&svc) else {
            return Ok(());
        };
        let pods = selected_pods(&self.pods, &svc, selector);
        // Computed before the equality check so the tracker's state advances even when the
        // sync turns out to be a no-op (as upstream does).
        let trigger_time = lock(&self.triggers).compute(key, &svc, &pods);
        let mut subsets = desired_subsets(&svc, &pods);

        let current = self.endpoints.get(&ObjectRef::new(name).within(ns));
        if lock(&self.writes).is_stale(key, |_| current.as_deref().map(|e| &e.metadata)) {
            anyhow::bail!("endpoints cache is older than our last write of {key}");
        }
        let labels = desired_labels(&svc);
        if let Some(cur) = current.as_deref() {
            let mut cur_labels = cur.metadata.labels.clone().unwrap_or_default();
            cur_labels.remove(HEADLESS_LABEL);
            let mut want_labels = labels.clone();
            want_labels.remove(HEADLESS_LABEL);
            let capacity_ok = {
                let (r, n) = count_addresses(cur.subsets.as_deref().unwrap_or_default());
                r + n <= MAX_CAPACITY && !cur.annotations().contains_key(OVER_CAPACITY)
            };
            if subsets_equal(cur.subsets.as_deref().unwrap_or_default(), &subsets)
                && cur_labels == want_labels
                && capacity_ok
            {
                return Ok(());
            }
        }

        let mut desired = current.as_deref().cloned().unwrap_or_else(|| Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let annotations = desired
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        match trigger_time {
            Some(t) => annotations.insert(LAST_CHANGE_TRIGGER_TIME.into(), format_trigger_time(t)),
            None => annotations.remove(LAST_CHANGE_TRIGGER_TIME),
        };
        if truncate(&mut subsets, MAX_CAPACITY) {
            annotations.insert(OVER_CAPACITY.into(), "truncated".into());
        } else {
            annotations.remove(OVER_CAPACITY);
        }
        desired.subsets = non_empty(subsets);
        desired.metadata.labels = Some(labels);

        let result = if current.is_none() {
            api.create(&PostParams::default(), &desired).await
        } else {
            api.replace(name, &PostParams::default(), &desired).await
        };
        match result {
            Ok(written) => {
                lock(&self.writes).wrote(key, &written.metadata);
                Ok(())
            }
            Err(e) if current.is_none() && is_namespace_terminating(&e) => Ok(()),
            Err(e) => {
                let (reason, note) = if current.is_none() {
                    (
                        "FailedToCreateEndpoint",
                        format!("Failed to create endpoint for service {key}: {e}"),
                    )
                } else {
                    (
                        "FailedToUpdateEndpoint",
                        format!("Failed to update endpoint {key}: {e}"),
                    )
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(note),
                    action: reason.into(),
                    secondary: None,
                };
                let reference = desired.object_ref(&());
                if let Err(err) = self.ctx.recorder.publish(&event, &reference).await {
                    tracing::debug!("recording {reason} for {key}: {err}");
                }
                Err(e).with_context(|| format!("writing endpoints {key}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns", "uid": "s1", "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": spec}))
            .expect("service fixture")
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
                pod_ips: (!ip.is_empty()).then(|| vec![PodIP { ip: ip.into() }]),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<String> {
        list.iter().flatten().map(|a| a.ip.clone()).collect()
    }

    #[test]
    fn find_port_cases() {
        let p = pod("a", "10.0.0.1", true);
        let cases: &[(serde_json::Value, Option<i32>)] = &[
            (json!({"port": 80, "targetPort": 9090}), Some(9090)),
            (json!({"port": 80}), Some(80)),
            (json!({"port": 80, "targetPort": "http"}), Some(8080)),
            (
                json!({"port": 80, "targetPort": "http", "protocol": "UDP"}),
                None,
            ),
            (json!({"port": 80, "targetPort": "nope"}), None),
        ];
        for (port, want) in cases {
            let sp: ServicePort = serde_json::from_value(port.clone()).expect("port fixture");
            assert_eq!(find_port(&p, &sp), *want, "{port}");
        }
    }

    #[test]
    fn should_pod_be_in_endpoints_cases() {
        let mut terminating = pod("t", "10.0.0.3", true);
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut succeeded = pod("s", "10.0.0.4", false);
        if let Some(s) = succeeded.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        let cases = [
            (pod("a", "10.0.0.1", true), false, true),
            (pod("b", "", true), true, false),
            (terminating.clone(), false, false),
            (terminating, true, true),
            (succeeded, true, false),
        ];
        for (p, include_terminating, want) in cases {
            assert_eq!(
                should_pod_be_in_endpoints(&p, include_terminating),
                want,
                "{:?}",
                p.metadata.name
            );
        }
    }

    #[test]
    fn subsets_split_ready_and_not_ready() {
        let s = svc(
            json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}], "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"]}),
        );
        let pods = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", false)),
            Arc::new(pod("c", "", true)),
        ];
        let subsets = desired_subsets(&s, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
        let ports = subsets[0].ports.clone().unwrap_or_default();
        assert_eq!(
            (
                ports[0].port,
                ports[0].name.as_deref(),
                ports[0].protocol.as_deref()
            ),
            (8080, Some("http"), Some("TCP"))
        );
        let a = &subsets[0].addresses.as_ref().expect("ready addresses")[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        let r = a.target_ref.as_ref().expect("targetRef");
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("a"), Some("uid-a"))
        );
    }

    #[test]
    fn publish_not_ready_addresses_makes_everything_ready() {
        let s = svc(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80}], "publishNotReadyAddresses": true, "clusterIP": "10.96.0.10"}),
        );
        let pods = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", false)),
        ];
        let subsets = desired_subsets(&s, &pods);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn ports_resolving_differently_split_subsets() {
        // Pod b has no "http" port: both serve the numeric port, only a serves "http", so the
        // addresses are packed per port set like upstream RepackSubsets.
        let s = svc(
            json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "raw", "port": 81, "targetPort": 9000}], "clusterIP": "10.96.0.10"}),
        );
        let mut b = pod("b", "10.0.0.2", true);
        if let Some(s) = b.spec.as_mut() {
            s.containers[0].ports = None;
        }
        let subsets = desired_subsets(&s, &[Arc::new(pod("a", "10.0.0.1", true)), Arc::new(b)]);
        assert_eq!(subsets.len(), 2);
        let mut shapes: Vec<(Vec<String>, usize)> = subsets
            .iter()
            .map(|s| (ips(&s.addresses), s.ports.as_ref().map_or(0, Vec::len)))
            .collect();
        shapes.sort();
        assert_eq!(
            shapes,
            [
                (vec!["10.0.0.1".to_string()], 1),
                (vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()], 1)
            ]
        );
    }

    #[test]
    fn headless_without_ports_and_hostname() {
        let s = svc(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
        let mut p = pod("a", "10.0.0.1", true);
        if let Some(s) = p.spec.as_mut() {
            s.hostname = Some("a".into());
            s.subdomain = Some("web".into());
        }
        let subsets = desired_subsets(&s, &[Arc::new(p)]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        assert_eq!(
            subsets[0].addresses.as_ref().expect("addresses")[0]
                .hostname
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            desired_labels(&s).get(HEADLESS_LABEL).map(String::as_str),
            Some("")
        );
        // Not headless and no ports: nothing.
        let s = svc(json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.1"}));
        assert!(desired_subsets(&s, &[Arc::new(pod("a", "10.0.0.1", true))]).is_empty());
    }

    #[test]
    fn equality_ignores_order_and_resource_versions() {
        let s = svc(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80}], "clusterIP": "10.96.0.10"}),
        );
        let want = desired_subsets(
            &s,
            &[
                Arc::new(pod("a", "10.0.0.1", true)),
                Arc::new(pod("b", "10.0.0.2", true)),
            ],
        );
        let mut have = want.clone();
        if let Some(a) = have[0].addresses.as_mut() {
            a.reverse();
            if let Some(r) = a[0].target_ref.as_mut() {
                r.resource_version = Some("7".into());
            }
        }
        assert!(subsets_equal(&have, &want));
        have[0].addresses.as_mut().map(|a| a.pop());
        assert!(!subsets_equal(&have, &want));
    }

    #[test]
    fn truncation_keeps_ready_first() {
        let addr = |i: usize| EndpointAddress {
            ip: format!("10.0.{}.{}", i / 256, i % 256),
            ..Default::default()
        };
        let mut subsets = vec![EndpointSubset {
            addresses: Some((0..8).map(addr).collect()),
            not_ready_addresses: Some((8..12).map(addr).collect()),
            ports: None,
        }];
        assert!(truncate(&mut subsets, 10));
        assert_eq!(count_addresses(&subsets), (8, 2));
        let mut subsets = vec![EndpointSubset {
            addresses: Some((0..12).map(addr).collect()),
            not_ready_addresses: Some(vec![addr(20)]),
            ports: None,
        }];
        assert!(truncate(&mut subsets, 10));
        assert_eq!(count_addresses(&subsets), (10, 0));
        assert!(!truncate(&mut subsets, 10));
    }

    fn set_ready_transition(p: &mut Pod, t: jiff::Timestamp) {
        if let Some(c) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].last_transition_time = Some(Time(t));
        }
    }

    #[test]
    fn trigger_time_tracks_changes_only() {
        let s = svc(json!({"selector": {"app": "web"}}));
        let mut p = pod("a", "10.0.0.1", true);
        let t1: jiff::Timestamp = "2024-01-02T00:00:00Z".parse().expect("time");
        set_ready_transition(&mut p, t1);
        let mut tracker = TriggerTimeTracker::default();
        let created: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().expect("time");
        // First sync: service creation is the earliest change.
        assert_eq!(
            tracker.compute("ns/web", &s, &[Arc::new(p.clone())]),
            Some(created)
        );
        // Nothing changed.
        assert_eq!(tracker.compute("ns/web", &s, &[Arc::new(p.clone())]), None);
        let t2: jiff::Timestamp = "2024-01-03T00:00:00Z".parse().expect("time");
        set_ready_transition(&mut p, t2);
        assert_eq!(tracker.compute("ns/web", &s, &[Arc::new(p)]), Some(t2));
        assert_eq!(format_trigger_time(t2), "2024-01-03T00:00:00Z");
    }

    #[test]
    fn selector_semantics() {
        let none = Service {
            spec: Some(ServiceSpec::default()),
            ..Default::default()
        };
        assert!(service_selector(&none).is_none());
        let empty = svc(json!({"selector": {}}));
        assert!(service_selector(&empty).is_none());
        let sel = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(selector_matches(
            &sel,
            &BTreeMap::from([("app".into(), "web".into()), ("x".into(), "y".into())])
        ));
        assert!(!selector_matches(&sel, &BTreeMap::new()));
    }

    #[test]
    fn write_tracker_waits_for_cache() {
        let meta = |rv: &str| ObjectMeta {
            name: Some("web".into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        };
        let mut t = kit::WriteTracker::default();
        t.wrote("ns/web", &meta("10"));
        let old = meta("9");
        let new = meta("10");
        assert!(t.is_stale("ns/web", |_| Some(&old)));
        assert!(t.is_stale("ns/web", |_| None));
        assert!(!t.is_stale("ns/web", |_| Some(&new)));
        // Met expectations are dropped.
        assert!(!t.is_stale("ns/web", |_| None));
        t.deleted("ns/web", "web");
        assert!(t.is_stale("ns/web", |_| Some(&new)));
        assert!(!t.is_stale("ns/web", |_| None));
        // Someone else deleted what we wrote: the watch's Delete settles it.
        t.wrote("ns/web", &meta("11"));
        assert!(t.is_stale("ns/web", |_| None));
        t.observed_deletion("ns/web", "web");
        assert!(!t.is_stale("ns/web", |_| None));
    }
}
