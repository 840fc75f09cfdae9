//! ServiceLB (k3s's load balancer, without its per-Service DaemonSets): every Service of type
//! LoadBalancer without a `spec.loadBalancerClass` gets, as `status.loadBalancer.ingress`, the
//! InternalIP of every Ready, schedulable Node. Traffic to `<node IP>:<port>` is served by
//! that node's service proxy, which treats these addresses like the Service's own.
//!
//! Kept up to date as Nodes come, go, turn NotReady or are cordoned; a Service that stops being
//! a LoadBalancer loses the ingress (the API server clears it on that update too). Services
//! with a `loadBalancerClass` belong to another implementation and are never touched. Nodes
//! labelled `node.kubernetes.io/exclude-from-external-load-balancers` are left out, as
//! upstream's service controller leaves them out.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;

use crate::Context;
use crate::endpoints::kit;

/// Nodes with this label serve no load balancer traffic.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The address a Node serves load balancer traffic on, if it serves any.
fn serving_address(node: &Node) -> Option<String> {
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let status = node.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if excluded || unschedulable || !ready || node.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP" && !a.address.is_empty())
        .map(|a| a.address.clone())
}

/// The ingress of every serving Node, in address order.
fn desired_ingress<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<LoadBalancerIngress> {
    let addresses: BTreeSet<String> = nodes.into_iter().filter_map(serving_address).collect();
    addresses
        .into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip),
            ip_mode: Some("VIP".into()),
            ..Default::default()
        })
        .collect()
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Whether this controller implements the Service's load balancer.
fn is_ours(svc: &Service) -> bool {
    is_load_balancer(svc)
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
}

fn current_ingress(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The ingress the Service should have: `None` when it is not this controller's to say.
fn wanted(svc: &Service, nodes: &[Arc<Node>]) -> Option<Vec<LoadBalancerIngress>> {
    if is_ours(svc) {
        Some(desired_ingress(nodes.iter().map(|n| n.as_ref())))
    } else if !is_load_balancer(svc) {
        Some(Vec::new())
    } else {
        None
    }
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let (queue, rx) = kit::queue();
    let services = {
        let queue = queue.clone();
        kit::informer::<Service, _>(&ctx, watcher::Config::default(), move |_, ev| {
            if let Some(svc) = kit::object(ev)
                && !matches!(ev, kit::Change::Delete(_))
            {
                queue.add(kit::key(svc));
            }
        })
    };
    let nodes = {
        let (queue, services) = (queue.clone(), services.clone());
        kit::informer::<Node, _>(&ctx, watcher::Config::default(), move |old, ev| {
            let before = old.as_deref().and_then(serving_address);
            let after = match ev {
                kit::Change::Delete(_) => None,
                _ => kit::object(ev).and_then(serving_address),
            };
            if before != after {
                for svc in services.state().iter().filter(|s| is_ours(s)) {
                    queue.add(kit::key(svc.as_ref()));
                }
            }
        })
    };
    if !kit::wait_synced(&[&services], &shutdown).await
        || !kit::wait_synced(&[&nodes], &shutdown).await
    {
        return Ok(());
    }
    // Nodes that turned ready while the Service cache filled queued nothing: start level.
    for svc in services.state() {
        queue.add(kit::key(svc.as_ref()));
    }
    let ctx2 = ctx.clone();
    kit::work("servicelb", queue, rx, &shutdown, |key| {
        let (ctx, services, nodes) = (ctx2.clone(), services.clone(), nodes.clone());
        async move { sync(&ctx, &services, &nodes, &key).await }
    })
    .await;
    Ok(())
}

async fn sync(
    ctx: &Context,
    services: &Store<Service>,
    nodes: &Store<Node>,
    key: &str,
) -> anyhow::Result<()> {
    let (ns, name) = kit::split(key)?;
    let Some(svc) = services.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let Some(want) = wanted(&svc, &nodes.state()) else {
        return Ok(());
    };
    if current_ingress(&svc) == want {
        return Ok(());
    }
    let ingress = if want.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(&want).context("encoding the ingress")?
    };
    let patch = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("updating the load balancer status of {key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn node(name: &str, ip: &str, ready: bool, extra: Value) -> Arc<Node> {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
            },
        });
        if let Some(spec) = extra.get("spec") {
            v["spec"] = spec.clone();
        }
        if let Some(labels) = extra.get("labels") {
            v["metadata"]["labels"] = labels.clone();
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn svc(spec: Value, ingress: &[&str]) -> Service {
        let ingress: Vec<Value> = ingress
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": "s", "namespace": "d"}, "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}}}),
        )
        .unwrap()
    }

    fn ips(v: Option<Vec<LoadBalancerIngress>>) -> Option<Vec<String>> {
        v.map(|l| l.into_iter().filter_map(|i| i.ip).collect())
    }

    #[test]
    fn ready_schedulable_nodes_serve() {
        let nodes = [
            node("b", "10.0.0.2", true, json!({})),
            node("a", "10.0.0.1", true, json!({})),
            node("c", "10.0.0.3", false, json!({})),
            node(
                "d",
                "10.0.0.4",
                true,
                json!({"spec": {"unschedulable": true}}),
            ),
            node(
                "e",
                "10.0.0.5",
                true,
                json!({"labels": {EXCLUDE_LABEL: ""}}),
            ),
        ];
        let lb = svc(json!({"type": "LoadBalancer"}), &[]);
        assert_eq!(
            ips(wanted(&lb, &nodes)),
            Some(vec!["10.0.0.1".into(), "10.0.0.2".into()])
        );
        let want = wanted(&lb, &nodes).unwrap();
        assert_eq!(want[0].ip_mode.as_deref(), Some("VIP"));
    }

    #[test]
    fn only_classless_load_balancers_are_ours() {
        let nodes = [node("a", "10.0.0.1", true, json!({}))];
        let classed = svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}),
            &["192.0.2.1"],
        );
        assert_eq!(ips(wanted(&classed, &nodes)), None);
        let cluster = svc(json!({"type": "ClusterIP"}), &["10.0.0.1"]);
        assert_eq!(ips(wanted(&cluster, &nodes)), Some(vec![]));
        let none: [Arc<Node>; 0] = [];
        let lb = svc(json!({"type": "LoadBalancer"}), &["10.0.0.1"]);
        assert_eq!(ips(wanted(&lb, &none)), Some(vec![]));
        assert_eq!(current_ingress(&lb).len(), 1);
    }
}
