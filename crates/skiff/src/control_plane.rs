//! The control loops `skiff server` runs beside its API server: the scheduler and the
//! controller manager, each an API client of that server (over its own TLS connection, with the
//! admin credentials until RBAC gives each component its own identity).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
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
}

/// An API client of the local server as its admin.
pub async fn local_client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).context("reading the admin kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("loading the admin kubeconfig")?;
    kube::Client::try_from(cfg).context("building the in-process API client")
}

/// Starts the enabled control loops; they stop when `shutdown` is cancelled.
pub async fn start(
    kubeconfig: &std::path::Path,
    args: &ControlPlaneArgs,
    shutdown: CancellationToken,
) -> Result<JoinSet<()>> {
    let client = local_client(kubeconfig).await?;
    let mut tasks = JoinSet::new();
    if !args.disable_controller_manager {
        let opts = controllers::Options {
            node_monitor_grace_period: args.node_monitor_grace_period,
            hpa_sync_period: args.hpa_sync_period,
            hpa_downscale_stabilization: args.hpa_downscale_stabilization,
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
