//! The control loop: watches NetworkPolicies, Pods and Namespaces, and after each burst of
//! relevant changes recomputes the rule model from the caches and applies the difference to the
//! kernel in one transaction.

use std::time::Duration;

use control::informer::{Change, Informers};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::nft::{self, Backend};
use crate::ruleset::Ruleset;
use crate::{Config, Error, model};

/// Least time between the starts of two transactions (kube-proxy's `minSyncPeriod`): a change
/// after a quiet spell is applied at once, the changes of a burst are coalesced.
pub const MIN_INTERVAL: Duration = Duration::from_millis(30);
/// Retry delays after a failed transaction (the next attempt rewrites the whole table).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the whole table is rewritten from scratch anyway, repairing any outside change.
const RESYNC: Duration = Duration::from_secs(600);

/// What the last [`Syncer::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// Applied a transaction of this many lines; `full` when it rewrote the table.
    Applied {
        full: bool,
        lines: usize,
    },
}

/// Keeps the kernel's table equal to the desired ruleset, by difference when it knows what the
/// table holds, by rewriting it otherwise (first run, after a failure, on resync).
pub struct Syncer<B> {
    backend: B,
    table: String,
    applied: Option<Ruleset>,
}

impl<B: Backend> Syncer<B> {
    pub fn new(backend: B, table: impl Into<String>) -> Self {
        Syncer {
            backend,
            table: table.into(),
            applied: None,
        }
    }

    /// Brings the table to `desired`. On failure the table's content is unknown, so the next
    /// call rewrites it whole.
    pub async fn apply(&mut self, desired: Ruleset) -> nft::Result<Outcome> {
        let (script, full) = match &self.applied {
            Some(old) if *old == desired => return Ok(Outcome::Unchanged),
            Some(old) => match desired.diff_script(old, &self.table) {
                Some(script) => (script, false),
                None => (desired.full_script(&self.table), true),
            },
            None => (desired.full_script(&self.table), true),
        };
        let lines = script.lines().count();
        self.applied = None;
        self.backend.apply(script).await?;
        self.applied = Some(desired);
        Ok(Outcome::Applied { full, lines })
    }

    /// Forgets what the table holds: the next apply rewrites it.
    pub fn forget(&mut self) {
        self.applied = None;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Policy = 0,
    Pod = 1,
    Namespace = 2,
}

enum Signal {
    Synced(Kind),
    Changed,
    Irrelevant,
}

fn signal<K>(kind: Kind, change: Change<K>, relevant: fn(&K, &K) -> bool) -> Signal {
    match change {
        Change::InitDone => Signal::Synced(kind),
        Change::Apply {
            old: Some(old),
            new,
        } if !relevant(&old, &new) => Signal::Irrelevant,
        _ => Signal::Changed,
    }
}

fn policy_changed(old: &NetworkPolicy, new: &NetworkPolicy) -> bool {
    old.spec != new.spec
}

/// Whether a pod change can change the rules: what selectors, addresses and named ports see.
fn pod_changed(old: &Pod, new: &Pod) -> bool {
    fn view(p: &Pod) -> impl PartialEq + '_ {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        (
            (
                &p.metadata.labels,
                spec.map(|s| (&s.node_name, s.host_network)),
            ),
            status.map(|s| (&s.phase, &s.pod_ip, &s.pod_ips)),
            spec.map(|s| s.containers.iter().map(|c| &c.ports).collect::<Vec<_>>()),
        )
    }
    view(old) != view(new)
}

fn namespace_changed(old: &Namespace, new: &Namespace) -> bool {
    old.metadata.labels != new.metadata.labels
}

struct Caches {
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
}

impl Caches {
    /// The desired ruleset from the caches as they are now, computed off the async workers.
    async fn desired(&self, cfg: &Config) -> Result<Ruleset, Error> {
        let (policies, pods, namespaces) = (
            self.policies.state(),
            self.pods.state(),
            self.namespaces.state(),
        );
        let (node, bridge) = (cfg.node_name.clone(), cfg.bridge.clone());
        let desired = tokio::task::spawn_blocking(move || {
            let model = model::compute(&policies, &pods, &namespaces, &node);
            Ruleset::from_model(&model, &bridge)
        });
        Ok(desired.await?)
    }
}

/// The loop behind [`crate::run`], after the checks.
pub(crate) async fn run_loop<B: Backend>(
    client: kube::Client,
    cfg: Config,
    backend: B,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // The informers stop with this loop, whichever way it ends.
    let stop = shutdown.child_token();
    let _stop_informers = stop.clone().drop_guard();
    let informers = Informers::default();
    let wc = watcher::Config::default();
    let policies = informers.get::<NetworkPolicy>(&client, wc.clone(), &stop);
    let pods = informers.get::<Pod>(&client, wc.clone(), &stop);
    let namespaces = informers.get::<Namespace>(&client, wc, &stop);
    let streams: Vec<BoxStream<'static, Signal>> = vec![
        policies
            .subscribe()
            .map(|c| signal(Kind::Policy, c, policy_changed))
            .boxed(),
        pods.subscribe()
            .map(|c| signal(Kind::Pod, c, pod_changed))
            .boxed(),
        namespaces
            .subscribe()
            .map(|c| signal(Kind::Namespace, c, namespace_changed))
            .boxed(),
    ];
    let mut signals = futures::stream::select_all(streams);
    let caches = Caches {
        policies: policies.store(),
        pods: pods.store(),
        namespaces: namespaces.store(),
    };

    let mut syncer = Syncer::new(backend, cfg.table.clone());
    let mut synced = [false; 3];
    // The first change not yet in the kernel, and when a failed transaction may be retried.
    let mut pending: Option<Instant> = None;
    let mut last_start: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = BACKOFF_MIN;
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    let mut first = true;
    loop {
        let due = next_transaction(synced.iter().all(|s| *s), pending, last_start, retry_at);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            signal = signals.next() => match signal {
                None if shutdown.is_cancelled() => return Ok(()),
                None => return Err(Error::WatchEnded),
                Some(Signal::Irrelevant) => {}
                Some(Signal::Synced(kind)) => {
                    synced[kind as usize] = true;
                    pending.get_or_insert_with(Instant::now);
                }
                Some(Signal::Changed) => {
                    pending.get_or_insert_with(Instant::now);
                }
            },
            _ = resync.tick() => {
                syncer.forget();
                pending.get_or_insert_with(Instant::now);
            }
            _ = sleep_until(due), if due.is_some() => {
                let since = pending.take().unwrap_or_else(Instant::now);
                let started = Instant::now();
                last_start = Some(started);
                let desired = caches.desired(&cfg).await?;
                let size = desired.size();
                match syncer.apply(desired).await {
                    Ok(outcome) => {
                        retry_at = None;
                        backoff = BACKOFF_MIN;
                        let latency = since.elapsed();
                        if let Outcome::Applied { full, .. } = outcome {
                            cfg.metrics.applied(full, latency, started.elapsed(), size);
                        }
                        if first {
                            info!(table = %cfg.table, elements = size.0, rules = size.1, ?latency, "NetworkPolicy rules in place");
                            first = false;
                        } else {
                            debug!(table = %cfg.table, ?outcome, elements = size.0, rules = size.1, ?latency, "NetworkPolicy rules updated");
                        }
                    }
                    Err(e) => {
                        cfg.metrics.failed();
                        warn!(table = %cfg.table, error = %e, retry_in = ?backoff, "applying NetworkPolicy rules failed");
                        pending = Some(since);
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

/// When the next transaction starts: never before every cache has synced or while nothing is
/// pending; at the retry time after a failure; else when the first pending change arrived,
/// but not sooner than [`MIN_INTERVAL`] after the previous transaction started.
fn next_transaction(
    synced: bool,
    pending: Option<Instant>,
    last_start: Option<Instant>,
    retry_at: Option<Instant>,
) -> Option<Instant> {
    match (synced, retry_at, pending) {
        (false, _, _) | (true, None, None) => None,
        (true, Some(at), _) => Some(at),
        (true, None, Some(since)) => {
            Some(last_start.map_or(since, |last| since.max(last + MIN_INTERVAL)))
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{Model, PolicyRef, PolicyRules};

    /// Records scripts; fails the calls whose index is in `fail`.
    #[derive(Clone, Default)]
    struct Recorder {
        scripts: Arc<Mutex<Vec<String>>>,
        fail: Arc<Mutex<Vec<usize>>>,
    }

    impl Backend for Recorder {
        async fn apply(&self, script: String) -> nft::Result<()> {
            let mut scripts = self.scripts.lock().unwrap();
            let n = scripts.len();
            scripts.push(script);
            if self.fail.lock().unwrap().contains(&n) {
                return Err(nft::Error::Failed {
                    status: "exit status: 1".into(),
                    stderr: "injected".into(),
                });
            }
            Ok(())
        }
    }

    fn isolated(ips: &[&str]) -> Ruleset {
        let policy = PolicyRef {
            namespace: "default".into(),
            name: "deny".into(),
        };
        let mut model = Model::default();
        for ip in ips {
            model
                .ingress
                .entry(ip.parse().unwrap())
                .or_default()
                .insert(policy.clone());
        }
        model.policies.insert(
            policy,
            PolicyRules {
                ingress: Some(vec![]),
                egress: None,
            },
        );
        Ruleset::from_model(&model, "skiff0")
    }

    #[tokio::test]
    async fn first_apply_is_full_then_differences_and_a_failure_forces_a_rewrite() {
        let rec = Recorder::default();
        rec.fail.lock().unwrap().push(2);
        let mut syncer = Syncer::new(rec.clone(), "t");

        let one = syncer.apply(isolated(&["10.0.0.2"])).await.unwrap();
        assert!(matches!(one, Outcome::Applied { full: true, .. }));
        assert_eq!(
            syncer.apply(isolated(&["10.0.0.2"])).await.unwrap(),
            Outcome::Unchanged
        );
        let two = syncer
            .apply(isolated(&["10.0.0.2", "10.0.0.3"]))
            .await
            .unwrap();
        assert!(
            matches!(two, Outcome::Applied { full: false, .. }),
            "{two:?}"
        );
        // The third transaction fails: the table is in an unknown state.
        assert!(syncer.apply(isolated(&["10.0.0.3"])).await.is_err());
        let four = syncer.apply(isolated(&["10.0.0.3"])).await.unwrap();
        assert!(
            matches!(four, Outcome::Applied { full: true, .. }),
            "{four:?}"
        );

        let scripts = rec.scripts.lock().unwrap();
        assert_eq!(scripts.len(), 4);
        assert!(scripts[0].starts_with("add table inet t\ndelete table inet t\n"));
        assert!(
            scripts[1].contains("add element inet t ingress { 10.0.0.3 : goto pod-10.0.0.3-in }"),
            "{}",
            scripts[1]
        );
        assert!(!scripts[1].contains("delete table"));
        assert!(scripts[3].starts_with("add table inet t\ndelete table inet t\n"));
    }

    #[test]
    fn transactions_start_at_once_after_a_quiet_spell_and_are_spaced_in_a_burst() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let cases = [
            ("not synced", false, Some(t0), None, None, None),
            ("nothing pending", true, None, Some(t0), None, None),
            ("first change", true, Some(t0), None, None, Some(t0)),
            (
                "quiet spell",
                true,
                Some(t0 + ms(100)),
                Some(t0),
                None,
                Some(t0 + ms(100)),
            ),
            (
                "burst",
                true,
                Some(t0 + ms(5)),
                Some(t0),
                None,
                Some(t0 + MIN_INTERVAL),
            ),
            (
                "retry",
                true,
                Some(t0),
                Some(t0),
                Some(t0 + ms(500)),
                Some(t0 + ms(500)),
            ),
        ];
        for (what, synced, pending, last, retry, want) in cases {
            assert_eq!(
                next_transaction(synced, pending, last, retry),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn only_relevant_pod_changes_wake_the_loop() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.2"}
        }))
        .unwrap();
        let mut touched = pod.clone();
        touched.metadata.resource_version = Some("7".into());
        touched.status.as_mut().unwrap().conditions = Some(vec![]);
        assert!(!pod_changed(&pod, &touched));
        let mut relabelled = pod.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("app".into(), "db".into());
        assert!(pod_changed(&pod, &relabelled));
        let mut finished = pod.clone();
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(pod_changed(&pod, &finished));
        let mut renamed_port = pod.clone();
        renamed_port.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .name = Some("web".into());
        assert!(pod_changed(&pod, &renamed_port));
    }
}
