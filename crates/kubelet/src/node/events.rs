//! Events the kubelet records about pods (`Pulled`, `Created`, `Started`, `Killing`, `BackOff`,
//! `Unhealthy`...), posted in the background so a slow API never holds up a pod worker; a
//! repeat of the same event within a pod bumps its count like upstream's correlator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::simulated::status::time;

/// (namespace, pod uid, reason, message).
type EventKey = (String, String, String, String);

#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    node: String,
    /// (namespace, pod uid, reason, message) -> (event name, count).
    seen: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
}

impl Events {
    pub fn new(client: kube::Client, node: String) -> Events {
        Events {
            client,
            node,
            seen: Arc::default(),
        }
    }

    pub fn normal(&self, pod: &Pod, reason: &str, message: String) {
        self.record(pod, "Normal", reason, message);
    }

    pub fn warn(&self, pod: &Pod, reason: &str, message: String) {
        self.record(pod, "Warning", reason, message);
    }

    fn record(&self, pod: &Pod, ty: &str, reason: &str, message: String) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (ns.clone(), uid.clone(), reason.to_string(), message.clone());
        let now = Timestamp::now();
        let (ev_name, count) = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > 10_000 {
                seen.clear();
            }
            match seen.get_mut(&key) {
                Some((ev, count)) => {
                    *count += 1;
                    (ev.clone(), *count)
                }
                None => {
                    let ev = format!("{name}.{:x}", now.as_nanosecond() as u64);
                    seen.insert(key, (ev.clone(), 1));
                    (ev, 1)
                }
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let node = self.node.clone();
        let ty = ty.to_string();
        let reason = reason.to_string();
        let rv = pod.metadata.resource_version.clone();
        tokio::spawn(async move {
            if count > 1 {
                let patch = json!({ "count": count, "lastTimestamp": time(now) });
                let _ = api
                    .patch(&ev_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                return;
            }
            let event: Result<Event, _> = serde_json::from_value(json!({
                "metadata": { "name": ev_name, "namespace": ns },
                "involvedObject": {
                    "kind": "Pod", "namespace": ns, "name": name, "uid": uid,
                    "apiVersion": "v1", "resourceVersion": rv,
                },
                "reason": reason,
                "message": message,
                "type": ty,
                "source": { "component": "kubelet", "host": node },
                "reportingComponent": "kubelet",
                "reportingInstance": node,
                "firstTimestamp": time(now),
                "lastTimestamp": time(now),
                "eventTime": null,
                "count": 1,
            }));
            if let Ok(event) = event {
                let _ = api.create(&PostParams::default(), &event).await;
            }
        });
    }
}
