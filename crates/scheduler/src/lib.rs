//! skiff's kube-scheduler: assigns pending pods to nodes with upstream's default plugins,
//! queueing, preemption and messages, as an API client under leader election.

mod cache;
pub mod config;
mod framework;
mod preemption;
mod queue;
mod scheduler;
mod selector;
mod types;

#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError, Scoring};

use tokio_util::sync::CancellationToken;

/// The Lease whose holder schedules.
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "kube-scheduler";

/// Schedules pods whose `spec.schedulerName` is `config.scheduler_name` while holding the
/// kube-system/kube-scheduler Lease; returns when `shutdown` is cancelled. Losing the Lease
/// stops scheduling and goes back to waiting for it.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = format!("{}_{:016x}", scheduler::hostname(), rand::random::<u64>());
    loop {
        let Some(lead) =
            control::leader::acquire(&client, LEASE_NAMESPACE, LEASE_NAME, &identity, &shutdown)
                .await
        else {
            return Ok(());
        };
        let result =
            scheduler::run_leading(client.clone(), config.clone(), lead.lost.clone()).await;
        lead.release().await;
        if shutdown.is_cancelled() {
            return result;
        }
        match result {
            Ok(()) => tracing::warn!("{identity} lost the scheduler lease; waiting to lead again"),
            Err(e) => tracing::error!("scheduler stopped: {e:#}; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(control::leader::RETRY_PERIOD) => {}
        }
    }
}
