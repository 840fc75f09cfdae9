//! kube-controller-manager: the control loops that drive every workload object toward its
//! desired state. Each controller is an API client (kube-runtime), level-triggered and
//! idempotent; all of them run under one leader-election Lease so several servers can share
//! the work.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod nodeipam;
pub mod quota;
pub mod replicaset;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod util;

/// Tunables, with upstream's defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// This controller manager's identity in the leader Lease.
    pub identity: String,
    /// A node whose Lease is older than this is NotReady/Unknown (upstream 40s).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked (upstream 5s).
    pub node_monitor_period: Duration,
    /// How often HPAs are evaluated (upstream 15s).
    pub hpa_sync_period: Duration,
    /// How long an HPA waits before scaling down to a lower recommendation (upstream 5m).
    pub hpa_downscale_stabilization: Duration,
    /// Nodes get their pod CIDRs from this range (upstream `--cluster-cidr`; k3s's default).
    pub cluster_cidr: nodeipam::Ipv4Net,
    /// The prefix length of each Node's pod CIDR (upstream `--node-cidr-mask-size`).
    pub node_cidr_mask_size: u8,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            identity: format!("skiff-{}", std::process::id()),
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            hpa_sync_period: Duration::from_secs(15),
            hpa_downscale_stabilization: Duration::from_secs(300),
            cluster_cidr: nodeipam::Ipv4Net::new(std::net::Ipv4Addr::new(10, 42, 0, 0), 16)
                .unwrap_or_else(|_| unreachable!("16 is a valid prefix length")),
            node_cidr_mask_size: 24,
        }
    }
}

/// What every controller gets.
pub struct Context {
    pub client: kube::Client,
    pub opts: Options,
    pub recorder: events::Recorder,
    /// Cancelled when leadership is lost or the process stops.
    pub shutdown: CancellationToken,
    /// One watch and cache per kind, shared by every controller of this term.
    pub informers: control::informer::Informers,
}

impl Context {
    pub fn new(client: kube::Client, opts: Options, shutdown: CancellationToken) -> Arc<Self> {
        let reporter = kube::runtime::events::Reporter {
            controller: "kube-controller-manager".into(),
            instance: Some(opts.identity.clone()),
        };
        let recorder = events::Recorder::new(client.clone(), reporter);
        Arc::new(Context {
            client,
            opts,
            recorder,
            shutdown,
            informers: control::informer::Informers::default(),
        })
    }
}

type Controller = fn(Arc<Context>) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;

/// Every controller, by name (as upstream names them in `--controllers`).
const CONTROLLERS: &[(&str, Controller)] = &[
    ("garbage-collector", |c| Box::pin(gc::run(c))),
    ("namespace", |c| Box::pin(namespace::run(c))),
    ("replicaset", |c| Box::pin(replicaset::run(c))),
    ("replicationcontroller", |c| Box::pin(replicaset::run_rc(c))),
    ("deployment", |c| Box::pin(deployment::run(c))),
    ("statefulset", |c| Box::pin(statefulset::run(c))),
    ("daemonset", |c| Box::pin(daemonset::run(c))),
    ("job", |c| Box::pin(job::run(c))),
    ("cronjob", |c| Box::pin(cronjob::run(c))),
    ("node-lifecycle", |c| Box::pin(node_lifecycle::run(c))),
    ("nodeipam", |c| Box::pin(nodeipam::run(c))),
    ("endpoints", |c| Box::pin(endpoints::run(c))),
    ("endpointslice", |c| Box::pin(endpointslice::run(c))),
    ("serviceaccount", |c| Box::pin(serviceaccount::run(c))),
    ("servicelb", |c| Box::pin(servicelb::run(c))),
    ("disruption", |c| Box::pin(disruption::run(c))),
    ("resourcequota", |c| Box::pin(quota::run(c))),
    ("horizontalpodautoscaling", |c| Box::pin(hpa::run(c))),
];

/// Runs the controller manager until `shutdown`: waits for leadership, runs every controller
/// while leading, and stops them all when leadership is lost.
pub async fn run(
    client: kube::Client,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let lease = control::leader::acquire(
            &client,
            "kube-system",
            "kube-controller-manager",
            &opts.identity,
            &shutdown,
        )
        .await;
        let Some(lease) = lease else { return Ok(()) };
        let term = lease.lost.clone();
        let ctx = Context::new(client.clone(), opts.clone(), term.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for (name, start) in CONTROLLERS {
            let (ctx, name) = (ctx.clone(), *name);
            tasks.spawn(async move {
                if let Err(e) = start(ctx).await {
                    tracing::error!(controller = name, "controller stopped: {e:#}");
                }
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                term.cancel();
                while tasks.join_next().await.is_some() {}
                lease.release().await;
                return Ok(());
            }
            _ = term.cancelled() => {
                tracing::warn!("lost the controller-manager lease; stopping controllers");
                while tasks.join_next().await.is_some() {}
            }
        }
    }
}
