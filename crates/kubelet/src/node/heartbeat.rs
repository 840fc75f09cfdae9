//! The node's registration and heartbeats, as upstream's kubelet does them: the Node object
//! with capacity from the machine, status (conditions, addresses, nodeInfo, the kubelet
//! endpoint) reported every `status_interval` and whenever a condition changed, and a Lease in
//! `kube-node-lease` renewed at a quarter of its duration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::NodeConfig;
use super::machine::Machine;
use super::pressure::Pressure;

pub const KUBELET_VERSION: &str = "v1.33.0-skiff";
use crate::node_status::LEASE_NAMESPACE;

pub(crate) struct Heartbeat {
    pub client: kube::Client,
    pub cfg: Arc<NodeConfig>,
    pub machine: Machine,
    pub pressure: Arc<Pressure>,
}

impl Heartbeat {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn labels(&self) -> Value {
        let mut labels = json!({
            "beta.kubernetes.io/arch": runtime::image::oci_arch(),
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": runtime::image::oci_arch(),
            "kubernetes.io/hostname": self.cfg.node_name,
            "kubernetes.io/os": "linux",
        });
        for (k, v) in &self.cfg.node_labels {
            labels[k] = json!(v);
        }
        labels
    }

    /// Creates the Node (or adopts an existing one of the same name, as a restarted kubelet
    /// does) and returns its pod CIDR if the cluster assigned one.
    pub async fn register(&self) -> Result<Option<String>> {
        let name = &self.cfg.node_name;
        let api = self.nodes();
        let mut spec = json!({});
        if !self.cfg.taints.is_empty() {
            spec["taints"] = json!(self.cfg.taints);
        }
        if let Some(cidr) = &self.cfg.pod_cidr {
            spec["podCIDR"] = json!(cidr);
            spec["podCIDRs"] = json!([cidr]);
        }
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": self.labels(),
                "annotations": { "volumes.kubernetes.io/controller-managed-attach-detach": "true" },
            },
            "spec": spec,
        }))
        .context("building the Node")?;
        let node = match api.create(&PostParams::default(), &obj).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let patch = json!({ "metadata": { "labels": self.labels() } });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("updating node {name}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("registering node {name}")),
        };
        let assigned = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty());
        if let (Some(have), Some(want)) = (&assigned, &self.cfg.pod_cidr)
            && have != want
        {
            // spec.podCIDR is immutable: the node keeps the CIDR it registered with first.
            tracing::warn!(node = %name, registered = %have, flag = %want,
                "the node already has a pod CIDR; --pod-cidr is ignored");
        }
        Ok(assigned)
    }

    /// Polls the Node until the cluster has assigned it a pod CIDR.
    pub async fn wait_for_pod_cidr(&self, timeout: std::time::Duration) -> Result<String> {
        let name = &self.cfg.node_name;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(node = %name, "waiting for the cluster to assign a pod CIDR");
        loop {
            let node = self
                .nodes()
                .get(name)
                .await
                .with_context(|| format!("reading node {name}"))?;
            if let Some(c) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                return Ok(c);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "node {name} got no pod CIDR within {timeout:?}: is the node IPAM controller \
                     running (skiff server --cluster-cidr)? Or pass --pod-cidr"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    fn status_patch(&self, node: Option<&Node>, now: Timestamp) -> Value {
        let observed = node.map(crate::node_status::observed).unwrap_or_default();
        let p = self.pressure.current();
        let wanted = [
            if p.memory {
                (
                    "MemoryPressure",
                    "True",
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                )
            } else {
                (
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                )
            },
            if p.disk {
                (
                    "DiskPressure",
                    "True",
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                )
            } else {
                (
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                )
            },
            if p.pid {
                (
                    "PIDPressure",
                    "True",
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                )
            } else {
                (
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                )
            },
            (
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ];
        let conditions = crate::node_status::conditions(&wanted, &observed, now);
        let m = &self.machine;
        let capacity = json!({
            "cpu": m.cpus.to_string(),
            "memory": format!("{}Ki", m.memory_bytes / 1024),
            "ephemeral-storage": format!("{}Ki", m.ephemeral_storage_bytes / 1024),
            "pods": self.cfg.max_pods.to_string(),
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        });
        // Upstream subtracts the hard eviction threshold (memory.available<100Mi) from
        // allocatable; nothing else is reserved by default.
        let allocatable = json!({
            "cpu": m.cpus.to_string(),
            "memory": format!("{}Ki", m.memory_bytes.saturating_sub(100 << 20) / 1024),
            "ephemeral-storage": format!("{}Ki", m.ephemeral_storage_bytes / 1024),
            "pods": self.cfg.max_pods.to_string(),
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        });
        json!({ "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [
                { "type": "InternalIP", "address": self.cfg.node_ip.to_string() },
                { "type": "Hostname", "address": self.cfg.node_name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.cfg.kubelet_port } },
            "nodeInfo": {
                "machineID": m.machine_id,
                "systemUUID": m.system_uuid,
                "bootID": m.boot_id,
                "kernelVersion": m.kernel_version,
                "osImage": m.os_image,
                "containerRuntimeVersion": concat!("skiff://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": runtime::image::oci_arch(),
            },
        }})
    }

    pub async fn report_status(&self) -> Result<Node> {
        let name = &self.cfg.node_name;
        let current = self.nodes().get(name).await.ok();
        let patch = self.status_patch(current.as_ref(), Timestamp::now());
        self.nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .with_context(|| format!("reporting status of node {name}"))
    }

    /// Renews the Lease with one merge patch; creates it, owned by the Node, when missing.
    pub async fn renew_lease(&self, node_uid: &str) -> Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let seconds = self.cfg.lease_duration.as_secs() as i64;
        crate::node_status::renew_lease(&api, &self.cfg.node_name, seconds, Some(node_uid)).await
    }

    /// Heartbeats until shutdown: the Lease every quarter of its duration, the status every
    /// `status_interval` or at once when node pressure changes.
    pub async fn run(self: Arc<Self>, node_uid: String, shutdown: CancellationToken) {
        let renew = self.cfg.lease_duration / 4;
        let mut lease_tick = tokio::time::interval(renew.max(Duration::from_millis(100)));
        let mut status_tick = tokio::time::interval(self.cfg.status_interval);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed = self.pressure.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = lease_tick.tick() => {
                    if let Err(e) = self.renew_lease(&node_uid).await {
                        tracing::warn!("{e:#}");
                    }
                }
                _ = status_tick.tick() => self.report_logged().await,
                Ok(()) = changed.changed() => self.report_logged().await,
            }
        }
    }

    async fn report_logged(&self) {
        if let Err(e) = self.report_status().await {
            tracing::warn!("{e:#}");
        }
    }
}
