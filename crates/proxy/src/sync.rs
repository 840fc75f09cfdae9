//! The proxy loop: watch Services and EndpointSlices, and after each burst of changes send nft
//! one transaction with the difference between what is programmed and what should be.

use std::sync::Arc;
use std::time::Duration;

use control::informer::{Change, Informers};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hostport::{self, HostPort};
use crate::model::{self, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};
use crate::nft::Nft;
use crate::rules::{self, Ruleset, Settings};
use crate::{Config, Error, Result};

/// What is programmed, and how to get from there to a desired `Ruleset`.
pub(crate) struct Syncer {
    pub(crate) settings: Settings,
    /// None until the first full sync, and after a failed transaction (state unknown).
    programmed: Option<Ruleset>,
}

impl Syncer {
    pub(crate) fn new(settings: Settings) -> Syncer {
        Syncer {
            settings,
            programmed: None,
        }
    }

    /// The transaction to apply, and whether it rebuilds the whole table; "" if nothing
    /// changed.
    pub(crate) fn plan(&self, desired: &Ruleset) -> (String, bool) {
        match &self.programmed {
            Some(old) => (rules::diff(old, desired, &self.settings.table), false),
            None => (rules::full(desired, &self.settings), true),
        }
    }

    pub(crate) fn applied(&mut self, desired: Ruleset) {
        self.programmed = Some(desired);
    }

    /// Forget what is programmed: the next plan rebuilds the table.
    pub(crate) fn invalidate(&mut self) {
        self.programmed = None;
    }

    pub(crate) fn needs_full(&self) -> bool {
        self.programmed.is_none()
    }
}

/// Changes received but not yet carried by a transaction: their arrival times.
const MAX_PENDING: usize = 100_000;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn note<K>(
    change: Option<Change<K>>,
    synced: &mut bool,
    pending: &mut Vec<Instant>,
    kind: &'static str,
) -> Result<bool> {
    match change {
        None => Err(Error::WatchEnded { kind }),
        Some(Change::InitDone) => {
            *synced = true;
            pending.push(Instant::now());
            Ok(true)
        }
        Some(Change::Init | Change::InitApply(_)) => Ok(false),
        Some(Change::Apply { .. } | Change::Delete(_)) => {
            if pending.len() < MAX_PENDING {
                pending.push(Instant::now());
            }
            Ok(true)
        }
    }
}

pub(crate) async fn run(
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<()> {
    let informers = Informers::default();
    let services = informers.get::<Service>(
        &client,
        watcher::Config::default().labels(&format!("!{LABEL_SERVICE_PROXY_NAME}")),
        &shutdown,
    );
    let slices = informers.get::<EndpointSlice>(
        &client,
        watcher::Config::default().labels(LABEL_SERVICE_NAME),
        &shutdown,
    );
    // The node's own pods, for their hostPorts.
    let pods = informers.get::<Pod>(
        &client,
        watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name)),
        &shutdown,
    );
    let mut svc_changes = services.subscribe().boxed();
    let mut slice_changes = slices.subscribe().boxed();
    let mut pod_changes = pods.subscribe().boxed();
    let (svc_store, slice_store, pod_store) = (services.store(), slices.store(), pods.store());
    let mut conflicts_logged: Vec<HostPort> = Vec::new();

    let mut syncer = Syncer::new(cfg.settings());
    let (mut svc_synced, mut slices_synced, mut pods_synced) = (false, false, false);
    let mut pending: Vec<Instant> = Vec::new();
    let mut dirty = false;
    let mut earliest = Instant::now();
    let mut retry = RETRY_MIN;
    let mut next_full = Instant::now() + cfg.full_sync_interval;

    loop {
        let ready = svc_synced && slices_synced && pods_synced && (dirty || syncer.needs_full());
        let due = earliest.max(Instant::now());
        // `biased`: queued changes are taken before the sync fires, so a burst already in the
        // channels is coalesced into one transaction.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            c = next(&mut svc_changes) => {
                dirty |= note(c, &mut svc_synced, &mut pending, "services")?;
            }
            c = next(&mut slice_changes) => {
                dirty |= note(c, &mut slices_synced, &mut pending, "endpointslices")?;
            }
            c = next(&mut pod_changes) => {
                dirty |= note(c, &mut pods_synced, &mut pending, "pods")?;
            }
            _ = tokio::time::sleep_until(next_full) => {
                // A periodic rebuild repairs whatever changed the table behind our back.
                syncer.invalidate();
                next_full = Instant::now() + cfg.full_sync_interval;
            }
            _ = tokio::time::sleep_until(due), if ready => {
                let started = Instant::now();
                let desired = {
                    let svcs = svc_store.state();
                    let slices = slice_store.state();
                    let ports = model::desired(
                        svcs.iter().map(Arc::as_ref),
                        slices.iter().map(Arc::as_ref),
                        &cfg.node_name,
                    );
                    let mut rs = rules::render(&ports, &syncer.settings);
                    let pods = pod_store.state();
                    let (mappings, conflicts) = hostport::host_ports(pods.iter().map(Arc::as_ref));
                    if conflicts != conflicts_logged {
                        for c in &conflicts {
                            tracing::warn!(pod = %c.pod, port = c.host_port, protocol = c.protocol.nft(), "hostPort already taken by an older pod on this node; not mapped");
                        }
                        conflicts_logged = conflicts;
                    }
                    rules::add_host_ports(&mut rs, &mappings);
                    rs
                };
                let (script, full) = syncer.plan(&desired);
                let outcome = if script.is_empty() { Ok(()) } else { cfg.nft.apply(&script).await };
                match outcome {
                    Ok(()) => {
                        let done = Instant::now();
                        if !script.is_empty() {
                            let size = desired.size();
                            tracing::debug!(full, chains = size.0, elements = size.1, took = ?(done - started), "service rules synced");
                            cfg.metrics.applied(
                                full,
                                done - started,
                                pending.drain(..).map(|t| done - t),
                                size,
                            );
                        }
                        pending.clear();
                        syncer.applied(desired);
                        dirty = false;
                        retry = RETRY_MIN;
                        earliest = done + cfg.sync_min_interval;
                    }
                    Err(e) => {
                        tracing::warn!("service rules: {e}; rebuilding the table in {retry:?}");
                        cfg.metrics.failed();
                        syncer.invalidate();
                        earliest = Instant::now() + retry;
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }
}

async fn next<K>(s: &mut (impl Stream<Item = Change<K>> + Unpin)) -> Option<Change<K>> {
    s.next().await
}

/// Deletes the table through `nft`.
pub(crate) fn cleanup(nft: &Nft, table: &str) -> Result<()> {
    if !rules::valid_table_name(table) {
        return Err(Error::InvalidTable {
            table: table.to_string(),
        });
    }
    nft.delete_table(table).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_plan_is_full_then_diffs_and_full_again_after_invalidate() {
        let mut s = Syncer::new(Settings {
            table: "t".into(),
            cluster_cidr: None,
            mark: 0x4000,
        });
        let rs = Ruleset::default();
        let (script, full) = s.plan(&rs);
        assert!(full && script.starts_with("add table ip t\ndelete table ip t\n"));
        s.applied(rs.clone());
        assert_eq!(s.plan(&rs), (String::new(), false));
        s.invalidate();
        assert!(s.needs_full());
        assert!(s.plan(&rs).1);
    }
}
