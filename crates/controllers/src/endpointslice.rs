//! EndpointSlice controller (upstream pkg/controller/endpointslice and k8s.io/endpointslice's
//! reconciler): for every Service with a selector, keeps discovery.k8s.io/v1 EndpointSlices
//! (at most 100 endpoints each, grouped by resolved port set, one address type each) that
//! list the pods it selects, changing as few slices as possible on every sync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::Context;
use crate::endpoints::{
    HEADLESS_LABEL, LAST_CHANGE_TRIGGER_TIME, TriggerTimeTracker, find_port, format_trigger_time,
    is_external_name, is_ipv6, is_not_found, is_pod_ready, is_service_ip_set, kit, pod_ips,
    pod_ref, selected_pods, service_selector, services_for_pod_event, should_pod_be_in_endpoints,
    should_set_hostname,
};

/// Value of the managed-by label on the slices this controller owns.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Which controller manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Upstream's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

// ---------------------------------------------------------------------------------------------
// Desired endpoints.

/// Address types the Service's IP families call for (upstream `getAddressTypesForService`).
fn address_types(svc: &Service) -> BTreeSet<&'static str> {
    let spec = svc.spec.as_ref();
    let mut types: BTreeSet<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if types.is_empty() {
        if is_service_ip_set(svc) {
            let v6 = spec
                .and_then(|s| s.cluster_ip.as_deref())
                .is_some_and(is_ipv6);
            types.insert(if v6 { "IPv6" } else { "IPv4" });
        } else {
            // Families not defaulted yet (an old API server) and headless: assume both.
            types.extend(["IPv4", "IPv6"]);
        }
    }
    types
}

/// Upstream `getEndpointPorts`: the Service's ports resolved against this pod.
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|sp| {
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(find_port(pod, sp)?),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// Upstream `podToEndpoint`.
fn pod_to_endpoint(pod: &Pod, node: Option<&Node>, svc: &Service, address_type: &str) -> Endpoint {
    let serving = is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // "ready" is never true for a terminating pod, unless the Service publishes everything.
    let ready = publish_not_ready || (serving && !terminating);
    let addresses = pod_ips(pod)
        .iter()
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| ip.is_ipv6() == (address_type == "IPv6"))
        .map(|ip| ip.to_string())
        .collect();
    let zone = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(pod_ref(pod)),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        zone,
        hostname: if should_set_hostname(pod, svc) {
            pod.spec.as_ref().and_then(|s| s.hostname.clone())
        } else {
            None
        },
        ..Default::default()
    }
}

/// Identity of an endpoint across syncs (upstream `hashEndpoint`): addresses, hostname and
/// target, so condition or topology changes update the endpoint in place.
fn endpoint_key(ep: &Endpoint) -> String {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let target = ep.target_ref.as_ref();
    serde_json::json!([
        addresses,
        ep.hostname.as_deref().unwrap_or_default(),
        target
            .and_then(|t| t.namespace.as_deref())
            .unwrap_or_default(),
        target.and_then(|t| t.name.as_deref()).unwrap_or_default(),
    ])
    .to_string()
}

/// Key of a set of ports, independent of order (upstream `NewPortMapKey`).
fn ports_key(ports: &[EndpointPort]) -> String {
    let mut keys: Vec<String> = ports
        .iter()
        .map(|p| serde_json::to_string(p).unwrap_or_default())
        .collect();
    keys.sort();
    keys.join(",")
}

/// Upstream `EndpointsEqualBeyondHash`: the fields outside the identity, ignoring the target's
/// resourceVersion.
fn endpoints_equal_beyond_hash(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| e.conditions.clone().unwrap_or_default();
    let target = |e: &Endpoint| {
        e.target_ref.clone().map(|mut t| {
            t.resource_version = None;
            t
        })
    };
    a.node_name == b.node_name && a.zone == b.zone && cond(a) == cond(b) && target(a) == target(b)
}

fn is_reserved_label(key: &str) -> bool {
    key == LABEL_SERVICE_NAME || key == LABEL_MANAGED_BY || key == HEADLESS_LABEL
}

/// Upstream `setEndpointSliceLabels`: the Service's labels plus the reserved ones, and whether
/// the non-reserved labels differ from the slice's current ones.
fn slice_labels(
    current: Option<&BTreeMap<String, String>>,
    svc: &Service,
) -> (BTreeMap<String, String>, bool) {
    let strip = |labels: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        labels
            .into_iter()
            .flatten()
            .filter(|(k, _)| !is_reserved_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut labels = strip(svc.metadata.labels.as_ref());
    let changed = strip(current) != labels;
    if !is_service_ip_set(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    (labels, changed)
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.kind == "Service" && o.api_version == "v1")
}

/// A new, unnamed slice for the Service (upstream `newEndpointSlice`).
fn new_slice(svc: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    let name = svc.metadata.name.clone().unwrap_or_default();
    // generateName appends 5 characters; drop the dash when the name would get too long.
    let prefix = if name.len() + 1 + 5 <= 253 {
        format!("{name}-")
    } else {
        name
    };
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: svc.metadata.namespace.clone(),
            owner_references: Some(vec![owner_ref(svc)]),
            labels: Some(slice_labels(None, svc).0),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: vec![],
        ports: Some(ports.to_vec()),
    }
}

/// Whether an existing slice is the placeholder we would create anyway.
fn is_same_placeholder(existing: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    existing.metadata.namespace == placeholder.metadata.namespace
        && existing.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
        && existing
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            == placeholder
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default()
        && existing.address_type == placeholder.address_type
        && existing.endpoints.is_empty()
        && existing.ports.as_ref().is_none_or(Vec::is_empty)
}

/// The writes one sync needs.
#[derive(Debug, Default)]
struct Plan {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
    /// Pods left out for now (their Node is unknown); the sync is retried.
    errors: Vec<String>,
}

/// Upstream `Reconciler.Reconcile`: compares the desired endpoints with the existing slices
/// and decides which slices to create, update and delete.
fn plan(
    svc: &Service,
    pods: &[Arc<Pod>],
    existing: &[Arc<EndpointSlice>],
    node: &dyn Fn(&str) -> Option<Arc<Node>>,
    max: usize,
) -> Plan {
    let types = address_types(svc);
    let mut plan = Plan::default();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        match types.get(slice.address_type.as_str()) {
            Some(t) => by_type.entry(t).or_default().push(slice),
            // The Service no longer has this address family.
            None => plan.delete.push(slice.as_ref().clone()),
        }
    }
    for address_type in types {
        let existing = by_type.remove(address_type).unwrap_or_default();
        plan_address_type(svc, pods, &existing, address_type, node, max, &mut plan);
    }
    plan
}

fn plan_address_type(
    svc: &Service,
    pods: &[Arc<Pod>],
    existing: &[&EndpointSlice],
    address_type: &str,
    node: &dyn Fn(&str) -> Option<Arc<Node>>,
    max: usize,
    plan: &mut Plan,
) {
    let mut create = vec![];
    let mut update = vec![];
    let mut delete = vec![];
    let mut existing_by_ports: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if owned_by(slice, svc) {
            existing_by_ports
                .entry(ports_key(slice.ports.as_deref().unwrap_or_default()))
                .or_default()
                .push(slice);
        } else {
            // Left over from an earlier Service of the same name.
            delete.push((*slice).clone());
        }
    }

    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut desired: BTreeMap<String, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)> =
        BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let ports = endpoint_ports(svc, pod);
        let entry = desired
            .entry(ports_key(&ports))
            .or_insert_with(|| (ports, BTreeMap::new()));
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        let found = node(node_name);
        if found.is_none() && !publish_not_ready {
            // The pod garbage collector removes pods of deleted nodes; until then (or until
            // the Node shows up in the cache) leave the pod out and retry.
            plan.errors.push(format!(
                "skipping pod {} : node {node_name:?} not found",
                pod.metadata.name.as_deref().unwrap_or_default()
            ));
            continue;
        }
        let ep = pod_to_endpoint(pod, found.as_deref(), svc, address_type);
        if !ep.addresses.is_empty() {
            entry.1.insert(endpoint_key(&ep), ep);
        }
    }

    for (key, (ports, mut endpoints)) in desired.iter().map(|(k, (p, e))| (k, (p, e.clone()))) {
        let slices = existing_by_ports
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (c, u, d) = plan_port_mapping(svc, slices, &mut endpoints, ports, address_type, max);
        create.extend(c);
        update.extend(u);
        delete.extend(d);
    }
    for (key, slices) in &existing_by_ports {
        if !desired.contains_key(key) {
            delete.extend(slices.iter().map(|s| (*s).clone()));
        }
    }

    // A Service with no endpoints still gets one empty slice.
    if existing.len() == delete.len() && create.is_empty() {
        let placeholder = new_slice(svc, &[], address_type);
        if delete.len() == 1 && is_same_placeholder(&delete[0], &placeholder) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }

    // Reuse slices about to be deleted for slices about to be created (upstream `finalize`).
    let mut i = 0;
    while i < delete.len() && !create.is_empty() {
        if delete[i].address_type == address_type && owned_by(&delete[i], svc) {
            let doomed = delete.remove(i);
            let mut slice = create
                .pop()
                .unwrap_or_else(|| new_slice(svc, &[], address_type));
            slice.metadata.name = doomed.metadata.name;
            slice.metadata.resource_version = doomed.metadata.resource_version;
            slice.metadata.generate_name = doomed.metadata.generate_name;
            update.push(slice);
        } else {
            i += 1;
        }
    }
    plan.create.extend(create);
    plan.update.extend(update);
    plan.delete.extend(delete);
}

/// Upstream `reconcileByPortMapping` for the slices of one port set: keep and update desired
/// endpoints in place, drop the rest, then fill slices already being updated, then an unchanged
/// slice with room, then new slices.
fn plan_port_mapping(
    svc: &Service,
    existing: &[&EndpointSlice],
    desired: &mut BTreeMap<String, Endpoint>,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> (Vec<EndpointSlice>, Vec<EndpointSlice>, Vec<EndpointSlice>) {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();

    // 1. Existing slices: keep desired endpoints (updated), drop the others.
    for slice in existing {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let mut kept = vec![];
        let mut endpoint_updated = false;
        for ep in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(ep)) {
                endpoint_updated |= !endpoints_equal_beyond_hash(&want, ep);
                kept.push(want);
            }
        }
        let (labels, labels_changed) = slice_labels(slice.metadata.labels.as_ref(), svc);
        if endpoint_updated || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
                by_name.insert(name, (*slice).clone());
            } else {
                let mut s = (*slice).clone();
                s.endpoints = kept;
                s.metadata.labels = Some(labels);
                to_update.insert(name.clone());
                by_name.insert(name, s);
            }
        } else if labels_changed {
            let mut s = (*slice).clone();
            s.metadata.labels = Some(labels);
            to_update.insert(name.clone());
            by_name.insert(name, s);
        } else {
            unchanged.insert(name.clone());
            by_name.insert(name, (*slice).clone());
        }
    }

    // 2. Fill the slices being updated anyway, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<&String> = to_update.iter().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name.get(*n).map_or(0, |s| s.endpoints.len())));
        for name in names {
            let Some(slice) = by_name.get_mut(name) else {
                continue;
            };
            while slice.endpoints.len() < max {
                let Some((_, ep)) = desired.pop_first() else {
                    break;
                };
                slice.endpoints.push(ep);
            }
        }
    }

    // 3. Then an unchanged slice the rest fits in (closest to full), else new slices.
    let mut create = vec![];
    while !desired.is_empty() {
        let mut target = None;
        if desired.len() < max && !unchanged.is_empty() {
            target = unchanged
                .iter()
                .filter_map(|n| {
                    by_name.get(n).map(|s| {
                        (
                            n.clone(),
                            max as i64 - (desired.len() + s.endpoints.len()) as i64,
                        )
                    })
                })
                .filter(|(_, room)| *room >= 0)
                .min_by_key(|(_, room)| *room)
                .map(|(n, _)| n);
        }
        let mut slice = match target.as_ref().and_then(|n| by_name.get(n)) {
            Some(s) => s.clone(),
            None => new_slice(svc, ports, address_type),
        };
        while slice.endpoints.len() < max {
            let Some((_, ep)) = desired.pop_first() else {
                break;
            };
            slice.endpoints.push(ep);
        }
        match slice.metadata.name.clone() {
            Some(name) => {
                unchanged.remove(&name);
                to_update.insert(name.clone());
                by_name.insert(name, slice);
            }
            None => create.push(slice),
        }
    }
    let take = |names: &BTreeSet<String>| {
        names
            .iter()
            .filter_map(|n| by_name.get(n).cloned())
            .collect::<Vec<_>>()
    };
    (create, take(&to_update), take(&to_delete))
}

// ---------------------------------------------------------------------------------------------
// The controller.

struct Controller {
    ctx: Arc<Context>,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    triggers: Mutex<TriggerTimeTracker>,
    writes: Arc<Mutex<kit::WriteTracker>>,
}

fn managed_service_key(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(CONTROLLER_NAME) {
        return None;
    }
    let svc = labels.get(LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    Some(format!(
        "{}/{svc}",
        slice.metadata.namespace.as_deref().unwrap_or_default()
    ))
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
    let nodes = kit::informer::<Node, _>(&ctx, watcher::Config::default(), |_, _| {});
    let writes = Arc::new(Mutex::new(kit::WriteTracker::default()));
    let slices = {
        let (queue, writes) = (queue.clone(), writes.clone());
        let wc =
            watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}"));
        kit::informer::<EndpointSlice, _>(&ctx, wc, move |_, ev| {
            let Some(slice) = kit::object(ev) else { return };
            let Some(key) = managed_service_key(slice) else {
                return;
            };
            if matches!(ev, kit::Change::Delete(_)) {
                lock(&writes)
                    .observed_deletion(&key, slice.metadata.name.as_deref().unwrap_or_default());
            }
            queue.add(key);
        })
    };
    if !kit::wait_synced(&[&services], &shutdown).await
        || !kit::wait_synced(&[&pods], &shutdown).await
        || !kit::wait_synced(&[&nodes], &shutdown).await
        || !kit::wait_synced(&[&slices], &shutdown).await
    {
        return Ok(());
    }
    crate::endpoints::spawn_resync(queue.clone(), services.clone(), shutdown.clone());

    let ctl = Arc::new(Controller {
        ctx,
        services,
        pods,
        nodes,
        slices,
        triggers: Mutex::default(),
        writes,
    });
    kit::work("endpointslice", queue, rx, &shutdown, |key| {
        let ctl = ctl.clone();
        async move { ctl.sync(&key).await }
    })
    .await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_trigger_time(slice: &mut EndpointSlice, trigger: Option<jiff::Timestamp>) {
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match trigger {
        Some(t) => annotations.insert(LAST_CHANGE_TRIGGER_TIME.into(), format_trigger_time(t)),
        None => annotations.remove(LAST_CHANGE_TRIGGER_TIME),
    };
}

impl Controller {
    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let (ns, name) = kit::split(key)?;
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The garbage collector deletes the slices through their ownerReferences.
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

        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && managed_service_key(s).as_deref() == Some(key)
            })
            .collect();
        let cached: BTreeMap<String, Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|s| Some((s.metadata.name.clone()?, s)))
            .collect();
        if lock(&self.writes).is_stale(key, |n| cached.get(n).map(|s| &s.metadata)) {
            anyhow::bail!("endpointslice cache is older than our last write for service {key}");
        }

        let pods = selected_pods(&self.pods, &svc, selector);
        let trigger = lock(&self.triggers).compute(key, &svc, &pods);
        let nodes = |n: &str| self.nodes.get(&ObjectRef::new(n));
        let plan = plan(&svc, &pods, &existing, &nodes, MAX_ENDPOINTS_PER_SLICE);

        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), ns);
        // No new slices for a Service being deleted: the garbage collector would race us.
        if svc.metadata.deletion_timestamp.is_none() {
            for mut slice in plan.create {
                set_trigger_time(&mut slice, trigger);
                match api.create(&PostParams::default(), &slice).await {
                    Ok(created) => lock(&self.writes).wrote(key, &created.metadata),
                    Err(e) if crate::endpoints::is_namespace_terminating(&e) => return Ok(()),
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("creating EndpointSlice for Service {key}"));
                    }
                }
            }
        }
        for mut slice in plan.update {
            set_trigger_time(&mut slice, trigger);
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            let updated = api
                .replace(&slice_name, &PostParams::default(), &slice)
                .await
                .with_context(|| {
                    format!("updating EndpointSlice {ns}/{slice_name} for Service {key}")
                })?;
            lock(&self.writes).wrote(key, &updated.metadata);
        }
        for slice in plan.delete {
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            match api.delete(&slice_name, &DeleteParams::default()).await {
                Ok(_) => lock(&self.writes).deleted(key, &slice_name),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("deleting EndpointSlice {ns}/{slice_name} for Service {key}")
                    });
                }
            }
        }
        if !plan.errors.is_empty() {
            anyhow::bail!("{}", plan.errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns", "uid": "s1", "labels": {"team": "a"}}, "spec": spec}))
            .expect("service fixture")
    }

    fn web() -> Service {
        svc(
            json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}], "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"]}),
        )
    }

    fn pod(i: usize, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("p{i:03}"), "namespace": "ns", "uid": format!("u{i}"), "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": format!("10.1.{}.{}", i / 256, i % 256), "podIPs": [{"ip": format!("10.1.{}.{}", i / 256, i % 256)}],
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .expect("pod fixture"),
        )
    }

    fn node(name: &str) -> Option<Arc<Node>> {
        (name == "n1").then(|| {
            Arc::new(Node {
                metadata: ObjectMeta {
                    name: Some("n1".into()),
                    labels: Some(BTreeMap::from([(LABEL_TOPOLOGY_ZONE.into(), "z1".into())])),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
    }

    /// Applies a plan the way the API would, naming created slices.
    fn apply(existing: Vec<Arc<EndpointSlice>>, plan: Plan) -> Vec<Arc<EndpointSlice>> {
        let mut by_name: BTreeMap<String, Arc<EndpointSlice>> = existing
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        for s in plan.delete {
            by_name.remove(s.metadata.name.as_deref().unwrap_or_default());
        }
        for s in plan.update {
            by_name.insert(s.metadata.name.clone().unwrap_or_default(), Arc::new(s));
        }
        let mut n = by_name.len();
        for mut s in plan.create {
            n += 1;
            s.metadata.name = Some(format!("web-{n:05}"));
            by_name.insert(s.metadata.name.clone().unwrap_or_default(), Arc::new(s));
        }
        by_name.into_values().collect()
    }

    fn total(slices: &[Arc<EndpointSlice>]) -> usize {
        slices.iter().map(|s| s.endpoints.len()).sum()
    }

    #[test]
    fn endpoint_fields() {
        let mut p = (*pod(1, true)).clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let cases = [
            (pod(1, true), false, (true, true, false)),
            (pod(1, false), false, (false, false, false)),
            (Arc::new(p.clone()), false, (false, true, true)),
            (Arc::new(p), true, (true, true, true)),
        ];
        for (p, publish, (ready, serving, terminating)) in cases {
            let mut s = web();
            if let Some(spec) = s.spec.as_mut() {
                spec.publish_not_ready_addresses = Some(publish);
            }
            let ep = pod_to_endpoint(&p, node("n1").as_deref(), &s, "IPv4");
            let c = ep.conditions.clone().unwrap_or_default();
            assert_eq!(
                (c.ready, c.serving, c.terminating),
                (Some(ready), Some(serving), Some(terminating))
            );
            assert_eq!(ep.addresses, ["10.1.0.1"]);
            assert_eq!(
                (ep.node_name.as_deref(), ep.zone.as_deref()),
                (Some("n1"), Some("z1"))
            );
            assert_eq!(
                ep.target_ref.as_ref().and_then(|r| r.name.as_deref()),
                Some("p001")
            );
            assert!(
                pod_to_endpoint(&pod(1, true), None, &s, "IPv6")
                    .addresses
                    .is_empty()
            );
        }
    }

    #[test]
    fn address_types_cases() {
        let cases: &[(serde_json::Value, &[&str])] = &[
            (json!({"ipFamilies": ["IPv4"]}), &["IPv4"]),
            (json!({"ipFamilies": ["IPv6", "IPv4"]}), &["IPv4", "IPv6"]),
            (json!({"clusterIP": "fd00::1"}), &["IPv6"]),
            (json!({"clusterIP": "10.0.0.1"}), &["IPv4"]),
            (json!({"clusterIP": "None"}), &["IPv4", "IPv6"]),
        ];
        for (spec, want) in cases {
            assert_eq!(
                address_types(&svc(spec.clone()))
                    .into_iter()
                    .collect::<Vec<_>>(),
                *want,
                "{spec}"
            );
        }
    }

    #[test]
    fn first_sync_creates_one_slice_with_labels_and_owner() {
        let s = web();
        let p = plan(&s, &[pod(1, true), pod(2, false)], &[], &node, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 0));
        let slice = &p.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert!(!labels.contains_key(HEADLESS_LABEL));
        let owner = &slice.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "s1", Some(true))
        );
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints.len(), 2);
        let port = &slice.ports.clone().unwrap_or_default()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
    }

    #[test]
    fn no_pods_gives_a_placeholder_once() {
        let s = web();
        let p = plan(&s, &[], &[], &node, 100);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
        let slices = apply(vec![], p);
        let p = plan(&s, &[], &slices, &node, 100);
        assert!(
            p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
            "{p:?}"
        );
        // Pods appear: the placeholder (different port set) is reused, not deleted + created.
        let p = plan(&s, &[pod(1, true)], &slices, &node, 100);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{p:?}"
        );
        assert_eq!(p.update[0].endpoints.len(), 1);
    }

    #[test]
    fn steady_state_is_a_no_op_and_changes_are_minimal() {
        let s = web();
        let pods: Vec<_> = (0..250).map(|i| pod(i, true)).collect();
        let slices = apply(vec![], plan(&s, &pods, &[], &node, 100));
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|sl| sl.endpoints.len() <= 100));
        assert_eq!(total(&slices), 250);
        let p = plan(&s, &pods, &slices, &node, 100);
        assert!(p.create.is_empty() && p.update.is_empty() && p.delete.is_empty());

        // One pod turns unready: exactly one slice is updated.
        let mut changed = pods.clone();
        changed[7] = pod(7, false);
        let p = plan(&s, &changed, &slices, &node, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));

        // One pod added: it goes into the slice with room, no new slice.
        let mut more = pods.clone();
        more.push(pod(300, true));
        let p = plan(&s, &more, &slices, &node, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        let slices2 = apply(slices.clone(), p);
        assert_eq!(total(&slices2), 251);

        // All pods gone: slices are deleted/reused into one placeholder.
        let p = plan(&s, &[], &slices, &node, 100);
        let after = apply(slices, p);
        assert_eq!(after.len(), 1);
        assert!(after[0].endpoints.is_empty());
    }

    #[test]
    fn unknown_node_is_skipped_with_error() {
        let s = web();
        let mut p = (*pod(1, true)).clone();
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some("gone".into());
        }
        let out = plan(&s, &[Arc::new(p.clone())], &[], &node, 100);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.create.len(), 1);
        assert!(out.create[0].endpoints.is_empty());
        // Unless the Service publishes not-ready addresses.
        let mut publish = web();
        if let Some(spec) = publish.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        let out = plan(&publish, &[Arc::new(p)], &[], &node, 100);
        assert!(out.errors.is_empty());
        assert_eq!(out.create[0].endpoints.len(), 1);
    }

    #[test]
    fn foreign_and_wrong_family_slices_are_replaced() {
        let s = web();
        let mut foreign = new_slice(&s, &[], "IPv4");
        foreign.metadata.name = Some("web-old".into());
        foreign.metadata.owner_references = Some(vec![OwnerReference {
            uid: "other".into(),
            kind: "Service".into(),
            api_version: "v1".into(),
            ..Default::default()
        }]);
        let mut v6 = new_slice(&s, &[], "IPv6");
        v6.metadata.name = Some("web-v6".into());
        let p = plan(
            &s,
            &[pod(1, true)],
            &[Arc::new(foreign), Arc::new(v6)],
            &node,
            100,
        );
        let mut deleted: Vec<_> = p
            .delete
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        deleted.sort();
        assert_eq!(deleted, ["web-old", "web-v6"]);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn service_label_change_updates_slices() {
        let s = web();
        let slices = apply(vec![], plan(&s, &[pod(1, true)], &[], &node, 100));
        let mut relabeled = s.clone();
        relabeled.metadata.labels = Some(BTreeMap::from([("team".into(), "b".into())]));
        let p = plan(&relabeled, &[pod(1, true)], &slices, &node, 100);
        assert_eq!(p.update.len(), 1);
        assert_eq!(
            p.update[0]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("b")
        );
    }
}
