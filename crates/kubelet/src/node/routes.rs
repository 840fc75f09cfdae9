//! The way to the other nodes' pods: every Node with a pod CIDR and an `InternalIP` other than
//! this one is a peer, and the node network makes the way to it (`podCIDR via InternalIP` with
//! host-gw, or over VXLAN); a node that goes away takes its way with it. The whole set is reconciled on each change, so a
//! missed event or a restart costs nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use network::node::{NodeNetwork, Peer};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Routes are reconciled at most this often (a burst of node updates costs one pass).
const SETTLE: Duration = Duration::from_millis(50);
/// After a failed pass, the next one comes this much later at the latest.
const RETRY: Duration = Duration::from_secs(5);

/// The peers `nodes` call for, seen from node `me`.
pub fn wanted_peers<'a>(me: &str, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Peer> {
    let mut routes = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        if name == me || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(cidr) = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<network::Ipv4Cidr>().ok())
        else {
            continue;
        };
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        if let Some(ip) = ip {
            routes.insert(
                name.to_string(),
                Peer {
                    pod_cidr: cidr,
                    node_ip: ip,
                },
            );
        }
    }
    let mut v: Vec<Peer> = routes.into_values().collect();
    v.sort();
    v.dedup();
    v
}

/// Keeps the routes to other nodes' pods until `shutdown`.
pub async fn run(
    client: kube::Client,
    me: String,
    net: Arc<NodeNetwork>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()));
    let mut stream = std::pin::pin!(stream);
    let mut synced = false;
    // When the next pass is due: SETTLE after the first change since the last pass, RETRY
    // after a failed one.
    let mut due: Option<tokio::time::Instant> = None;
    let mut applied: Option<Vec<Peer>> = None;
    loop {
        let wake = due.unwrap_or_else(|| tokio::time::Instant::now() + RETRY);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => {
                match ev {
                    Some(Ok(watcher::Event::InitDone)) => synced = true,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "watching nodes for routes");
                        continue;
                    }
                    None => return,
                }
                if synced && due.is_none() {
                    due = Some(tokio::time::Instant::now() + SETTLE);
                }
            }
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                due = None;
                let nodes = reader.state();
                let wanted = wanted_peers(&me, nodes.iter().map(|n| n.as_ref()));
                if applied.as_ref() == Some(&wanted) {
                    continue;
                }
                match net.sync_peers(&wanted).await {
                    Ok(()) => applied = Some(wanted),
                    Err(e) => {
                        warn!(error = %e, "syncing routes to other nodes' pods");
                        applied = None;
                        due = Some(tokio::time::Instant::now() + RETRY);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        if let Some(ip) = ip {
            n["status"]["addresses"] = json!([
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ]);
        }
        serde_json::from_value(n).unwrap()
    }

    #[test]
    fn routes_to_every_other_node_with_cidr_and_address() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("172.31.0.10")),
            node("b", Some("10.42.1.0/24"), Some("172.31.0.11")),
            node("c", None, Some("172.31.0.12")),
            node("d", Some("10.42.3.0/24"), None),
            node("e", Some("garbage"), Some("172.31.0.14")),
        ];
        let r = wanted_peers("a", nodes.iter());
        assert_eq!(
            r,
            vec![Peer {
                pod_cidr: "10.42.1.0/24".parse().unwrap(),
                node_ip: Ipv4Addr::new(172, 31, 0, 11),
            }]
        );
    }
}
