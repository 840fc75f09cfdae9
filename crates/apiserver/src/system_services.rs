//! The Services the API server keeps for the cluster, at start and every 10 seconds after
//! (upstream's `kubernetes` Service controller and endpoint reconciler, plus the cluster DNS
//! Service k3s ships):
//!
//! - `default/kubernetes`: the first address of the service CIDR, port 443 (`https`) to the
//!   server's port, with an Endpoints object (labelled `endpointslice.kubernetes.io/skip-mirror`
//!   as upstream) and an EndpointSlice (`kubernetes.io/service-name: kubernetes`, no
//!   managed-by label, as upstream) pointing at the server's advertised address;
//! - `kube-system/kube-dns`: the cluster DNS address, `dns` 53/UDP and `dns-tcp` 53/TCP, no
//!   selector, annotated `skiff.dev/node-local-dns: "true"`: every node serves DNS on that
//!   address itself, so the service proxy leaves the Service alone.
//!
//! Writes go through the server's own request path (`ApiServer::route`) as
//! `system:apiserver`, so they are allocated, defaulted, validated and field-managed like any
//! client's. Only what the server owns is reconciled: ports and type of the Services, the
//! labels and annotation it sets, the endpoints; a Service whose address moved (a new service
//! CIDR or cluster DNS address) is recreated.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::UserInfo;
use crate::http::Req;
use crate::server::ApiServer;

/// Services with this annotation are served by every node's own DNS, not by the proxy.
pub const NODE_LOCAL_DNS_ANNOTATION: &str = "skiff.dev/node-local-dns";

/// How often the Services are checked again (upstream's endpoint reconcile interval).
const INTERVAL: Duration = Duration::from_secs(10);

/// The desired `default/kubernetes` Service.
pub fn kubernetes_service(cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "kubernetes", "namespace": "default",
            "labels": { "component": "apiserver", "provider": "kubernetes" },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "sessionAffinity": "None",
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }],
        },
    })
}

/// The desired `kube-system/kube-dns` Service (k3s's labels; no selector: nodes serve it).
pub fn dns_service(cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "kube-dns", "namespace": "kube-system",
            "labels": { "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true" },
            "annotations": { NODE_LOCAL_DNS_ANNOTATION: "true" },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
            ],
        },
    })
}

fn endpoints(endpoint: SocketAddr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": "kubernetes", "namespace": "default",
            "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" },
        },
        "subsets": [{
            "addresses": [{ "ip": endpoint.ip().to_string() }],
            "ports": [{ "name": "https", "port": endpoint.port(), "protocol": "TCP" }],
        }],
    })
}

fn endpoint_slice(endpoint: SocketAddr) -> Value {
    let address_type = match endpoint.ip() {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes", "namespace": "default",
            "labels": { "kubernetes.io/service-name": "kubernetes" },
        },
        "addressType": address_type,
        "endpoints": [{ "addresses": [endpoint.ip().to_string()], "conditions": { "ready": true } }],
        "ports": [{ "name": "https", "port": endpoint.port(), "protocol": "TCP" }],
    })
}

/// Makes the Services and the `kubernetes` endpoints match; `endpoint` is where clients of
/// the `kubernetes` Service reach this server.
pub async fn ensure(server: &Arc<ApiServer>, endpoint: SocketAddr) -> Result<()> {
    let ranges = server.services.ranges();
    let api = "/api/v1/namespaces";
    ensure_object(
        server,
        &format!("{api}/default/services"),
        kubernetes_service(&ranges.kubernetes_ip().to_string(), endpoint.port()),
        reconcile_service,
    )
    .await?;
    ensure_object(
        server,
        &format!("{api}/default/endpoints"),
        endpoints(endpoint),
        |current, desired| reconcile_fields(current, desired, &["subsets"], &[]),
    )
    .await?;
    ensure_object(
        server,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        endpoint_slice(endpoint),
        |current, desired| {
            reconcile_fields(current, desired, &["endpoints", "ports"], &["addressType"])
        },
    )
    .await?;
    ensure_object(
        server,
        &format!("{api}/kube-system/services"),
        dns_service(&ranges.cluster_dns.to_string()),
        reconcile_service,
    )
    .await?;
    Ok(())
}

/// Ensures every `INTERVAL` until `shutdown` (or the server is gone), so a deleted or edited
/// system Service comes back.
pub async fn run(server: Weak<ApiServer>, endpoint: SocketAddr, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        let Some(server) = server.upgrade() else {
            return;
        };
        if let Err(e) = ensure(&server, endpoint).await {
            tracing::warn!("ensuring the cluster's system Services: {e:#}");
        }
    }
}

/// What to do with an existing object.
enum Action {
    Keep,
    Update(Value),
    Recreate,
}

/// Services: our labels and annotations added, ports and type ours; a moved address means a
/// new Service (cluster IPs are immutable).
fn reconcile_service(current: &Value, desired: &Value) -> Action {
    if current["spec"]["clusterIP"] != desired["spec"]["clusterIP"] {
        return Action::Recreate;
    }
    let mut updated = current.clone();
    for field in ["labels", "annotations"] {
        if let Some(want) = desired["metadata"][field].as_object() {
            let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) else {
                return Action::Recreate;
            };
            let have = meta.entry(field).or_insert_with(|| json!({}));
            if !have.is_object() {
                *have = json!({});
            }
            if let Some(have) = have.as_object_mut() {
                have.extend(want.clone());
            }
        }
    }
    if let Some(spec) = updated.get_mut("spec").and_then(Value::as_object_mut) {
        for field in ["ports", "type"] {
            spec.insert(field.into(), desired["spec"][field].clone());
        }
    }
    if &updated == current {
        Action::Keep
    } else {
        Action::Update(updated)
    }
}

/// Endpoints and EndpointSlices: labels exactly ours (as upstream), `owned` fields ours,
/// `immutable` fields only by recreating.
fn reconcile_fields(
    current: &Value,
    desired: &Value,
    owned: &[&str],
    immutable: &[&str],
) -> Action {
    if immutable.iter().any(|f| current[*f] != desired[*f]) {
        return Action::Recreate;
    }
    let mut updated = current.clone();
    let Some(obj) = updated.as_object_mut() else {
        return Action::Recreate;
    };
    for f in owned {
        obj.insert((*f).into(), desired[*f].clone());
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("labels".into(), desired["metadata"]["labels"].clone());
    }
    if &updated == current {
        Action::Keep
    } else {
        Action::Update(updated)
    }
}

async fn ensure_object(
    server: &Arc<ApiServer>,
    collection: &str,
    desired: Value,
    reconcile: impl Fn(&Value, &Value) -> Action,
) -> Result<()> {
    let name = desired["metadata"]["name"].as_str().unwrap_or_default();
    let path = format!("{collection}/{name}");
    let (code, current) = call(server, Method::GET, &path, None).await?;
    let action = match code {
        404 => None,
        200 => Some(reconcile(&current, &desired)),
        _ => bail!("reading {path}: {}", status_message(code, &current)),
    };
    match action {
        Some(Action::Keep) => return Ok(()),
        Some(Action::Update(updated)) => {
            let (code, body) = call(server, Method::PUT, &path, Some(&updated)).await?;
            return match code {
                200 => Ok(()),
                _ => bail!("updating {path}: {}", status_message(code, &body)),
            };
        }
        Some(Action::Recreate) => {
            tracing::warn!("{path} does not match what the server keeps: recreating it");
            let uid = current["metadata"]["uid"].clone();
            let options = json!({ "preconditions": { "uid": uid } });
            let (code, body) = call(server, Method::DELETE, &path, Some(&options)).await?;
            if !matches!(code, 200 | 202 | 404) {
                bail!("deleting {path}: {}", status_message(code, &body));
            }
        }
        None => {}
    }
    let (code, body) = call(server, Method::POST, collection, Some(&desired)).await?;
    match code {
        // 409: created meanwhile by another server of the cluster.
        201 | 409 => Ok(()),
        _ => bail!("creating {path}: {}", status_message(code, &body)),
    }
}

fn status_message(code: u16, body: &Value) -> String {
    match body["message"].as_str() {
        Some(m) => format!("{m} ({code})"),
        None => format!("status {code}"),
    }
}

/// One request through the server's own handlers, as `system:apiserver`.
async fn call(
    server: &Arc<ApiServer>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        (http::header::CONTENT_TYPE, "application/json"),
        (http::header::ACCEPT, "application/json"),
        (http::header::USER_AGENT, "kube-apiserver/v1.33.0 (skiff)"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    let body = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v).context("encoding a request body")?),
        None => Bytes::new(),
    };
    let req = Req {
        method,
        path: path.to_string(),
        query: crate::request::Query::parse(None),
        headers,
        body,
        user: UserInfo {
            name: "system:apiserver".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        },
        upgrade: None,
    };
    let resp = server.route(req).await;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {path}"))?
        .to_bytes();
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_reconciliation_keeps_what_others_own() {
        let desired = dns_service("10.43.0.10");
        let mut current = desired.clone();
        current["metadata"]["labels"]["team"] = json!("infra");
        current["spec"]["sessionAffinity"] = json!("None");
        assert!(matches!(
            reconcile_service(&current, &desired),
            Action::Keep
        ));

        current["spec"]["ports"] =
            json!([{ "name": "dns", "port": 5353, "protocol": "UDP", "targetPort": 53 }]);
        current["metadata"]["annotations"] = json!({ "other": "x" });
        let Action::Update(updated) = reconcile_service(&current, &desired) else {
            panic!("expected an update");
        };
        assert_eq!(updated["spec"]["ports"], desired["spec"]["ports"]);
        assert_eq!(updated["metadata"]["labels"]["team"], "infra");
        assert_eq!(updated["metadata"]["annotations"]["other"], "x");
        assert_eq!(
            updated["metadata"]["annotations"][NODE_LOCAL_DNS_ANNOTATION],
            "true"
        );

        current["spec"]["clusterIP"] = json!("10.43.0.11");
        assert!(matches!(
            reconcile_service(&current, &desired),
            Action::Recreate
        ));
    }

    #[test]
    fn slices_are_recreated_for_a_new_address_type() {
        let v4 = endpoint_slice("10.0.0.1:6443".parse().unwrap());
        let v6 = endpoint_slice("[fd00::1]:6443".parse().unwrap());
        assert!(matches!(
            reconcile_fields(&v4, &v4, &["endpoints", "ports"], &["addressType"]),
            Action::Keep
        ));
        assert!(matches!(
            reconcile_fields(&v4, &v6, &["endpoints", "ports"], &["addressType"]),
            Action::Recreate
        ));
        let moved = endpoint_slice("10.0.0.2:6443".parse().unwrap());
        assert!(matches!(
            reconcile_fields(&v4, &moved, &["endpoints", "ports"], &["addressType"]),
            Action::Update(_)
        ));
    }
}
