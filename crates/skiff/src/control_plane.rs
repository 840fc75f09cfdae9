//! The control loops `skiff server` runs beside its API server: the scheduler and the
//! controller manager, each an API client of that server through the in-process loopback
//! transport (`apiserver::loopback`), as `system:kube-scheduler` and
//! `system:kube-controller-manager`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use apiserver::loopback::Loopback;
use apiserver::server::ApiServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Parses a Go-style duration flag ("40s", "5m", "1m30s") or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    d.try_into()
        .map_err(|_| format!("invalid duration {s:?}: negative"))
}

#[derive(clap::Args, Clone, Debug)]
pub struct ControlPlaneArgs {
    /// Do not run the scheduler.
    #[arg(long)]
    pub disable_scheduler: bool,
    /// Do not run the controller manager.
    #[arg(long)]
    pub disable_controller_manager: bool,
    /// A KubeSchedulerConfiguration file (e.g. to select MostAllocated scoring).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// How long a node may go without a heartbeat before it is NotReady (upstream: 40s).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How often HPAs are evaluated (upstream: 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub hpa_sync_period: Duration,
    /// How long an HPA keeps a higher recommendation before scaling down (upstream: 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub hpa_downscale_stabilization: Duration,
    /// The prefix length of each Node's pod CIDR, cut from --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
}

impl ControlPlaneArgs {
    /// Checks the flags against the cluster CIDR (the node's --cluster-cidr).
    pub fn check(&self, cluster_cidr: controllers::nodeipam::Ipv4Net) -> Result<()> {
        controllers::nodeipam::CidrSet::new(cluster_cidr, self.node_cidr_mask_size)?;
        Ok(())
    }
}

/// An API client of `server` for the component `name`.
pub fn loopback_client(server: &Arc<ApiServer>, name: &str) -> kube::Client {
    kube::Client::new(Loopback::new(server.clone(), name), "default")
}

/// Starts the enabled control loops; they stop when `shutdown` is cancelled.
pub fn start(
    server: &Arc<ApiServer>,
    args: &ControlPlaneArgs,
    cluster_cidr: controllers::nodeipam::Ipv4Net,
    shutdown: CancellationToken,
) -> Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    if !args.disable_controller_manager {
        let client = loopback_client(server, "kube-controller-manager");
        let opts = controllers::Options {
            node_monitor_grace_period: args.node_monitor_grace_period,
            hpa_sync_period: args.hpa_sync_period,
            hpa_downscale_stabilization: args.hpa_downscale_stabilization,
            cluster_cidr,
            node_cidr_mask_size: args.node_cidr_mask_size,
            ..Default::default()
        };
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = controllers::run(client, opts, shutdown).await {
                tracing::error!("controller manager stopped: {e:#}");
            }
        });
    }
    if !args.disable_scheduler {
        let config = match &args.scheduler_config {
            Some(path) => scheduler::Config::from_file(path)?,
            None => scheduler::Config::default(),
        };
        let client = loopback_client(server, "kube-scheduler");
        tasks.spawn(async move {
            if let Err(e) = scheduler::run(client, config, shutdown).await {
                tracing::error!("scheduler stopped: {e:#}");
            }
        });
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("soon").is_err());
    }
}
