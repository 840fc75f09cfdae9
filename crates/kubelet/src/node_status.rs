//! What every node this agent plays reports, real or simulated: its conditions (keeping a
//! condition's transition time while its status holds) and its Lease in `kube-node-lease`.

use anyhow::{Context, Result};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::simulated::status::{micro_time, time};

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";

/// One condition a kubelet reports: type, status, reason, message.
pub(crate) type Condition<'a> = (&'a str, &'a str, &'a str, &'a str);

/// `(type, status, lastTransitionTime)` of a Node's conditions as the API has them.
pub(crate) fn observed(node: &Node) -> Vec<(String, String, String)> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let ltt = c
                        .last_transition_time
                        .as_ref()
                        .map(|t| time(t.0))
                        .unwrap_or_default();
                    (c.type_.clone(), c.status.clone(), ltt)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `conditions` of a node status as of `now`: a condition whose status did not change keeps
/// its transition time.
pub(crate) fn conditions(
    wanted: &[Condition<'_>],
    observed: &[(String, String, String)],
    now: Timestamp,
) -> Vec<Value> {
    let now_s = time(now);
    wanted
        .iter()
        .map(|(ty, status, reason, message)| {
            let ltt = observed
                .iter()
                .find(|(t, s, ltt)| t == ty && s == status && !ltt.is_empty())
                .map_or_else(|| now_s.clone(), |(_, _, ltt)| ltt.clone());
            json!({
                "type": ty,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now_s,
                "lastTransitionTime": ltt,
            })
        })
        .collect()
}

/// Renews node `name`'s Lease with one merge patch; when it does not exist, creates it owned by
/// the Node (so it goes when the Node goes) if the Node's `owner_uid` is known.
pub(crate) async fn renew_lease(
    api: &Api<Lease>,
    name: &str,
    duration_seconds: i64,
    owner_uid: Option<&str>,
) -> Result<()> {
    let spec = json!({
        "holderIdentity": name,
        "leaseDurationSeconds": duration_seconds,
        "renewTime": micro_time(Timestamp::now()),
    });
    let patch = json!({ "spec": spec });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e).with_context(|| format!("renewing lease {name}")),
    }
    let Some(uid) = owner_uid else {
        return Ok(());
    };
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": name, "uid": uid }],
        },
        "spec": spec,
    }))
    .context("building the Lease")?;
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating lease {name}")),
    }
}
