//! Benchmarks of rule programming, for `skiff bench` and `examples/proxy_bench.rs`: the whole
//! pipeline (model, render, diff, `nft -f -`) in a scratch network namespace, first without an
//! API server (how long syncs take), then through one (how long a change takes from the API
//! write to the applied transaction).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Summary};
use crate::nft::{self, Nft};
use crate::rules::{self, Ruleset, Settings};
use crate::{Config, model};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {detail}")]
    Netns { what: String, detail: String },
    #[error(transparent)]
    Nft(#[from] nft::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("timed out after {0:?} waiting for the proxy to apply a change")]
    Timeout(Duration),
    #[error("the proxy stopped: {0}")]
    Proxy(String),
    #[error("bench options: {0}")]
    Options(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Options {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Endpoint changes measured one after another.
    pub changes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            services: 1000,
            endpoints_per_service: 3,
            changes: 100,
        }
    }
}

/// Sync figures without an API server.
#[derive(Clone, Debug)]
pub struct ProgrammingReport {
    pub services: usize,
    pub endpoints: usize,
    /// Building and applying the whole table once.
    pub full_sync: Duration,
    pub full_script_bytes: usize,
    /// Model, render and diff for one endpoint change (no nft).
    pub compute: Summary,
    /// One endpoint change, computed and applied (`svc_rule_sync` in the issue).
    pub sync: Summary,
    /// Mean transaction size of one change.
    pub change_script_bytes: usize,
}

/// Figures through an API server: an EndpointSlice patched, then waited for in the rules.
#[derive(Clone, Debug)]
pub struct EndToEndReport {
    pub services: usize,
    pub endpoints: usize,
    /// From the proxy's start to its first full sync with everything listed.
    pub initial_sync: Duration,
    /// From sending the patch to nft having applied it (includes the API write and watch).
    pub write_to_applied: Summary,
    /// From the watch event to nft having applied it (the proxy's own share).
    pub event_to_applied: Summary,
    /// Duration of each transaction.
    pub sync: Summary,
}

/// A network namespace made for the bench and removed when dropped.
pub struct ScratchNetns {
    pub name: String,
}

impl ScratchNetns {
    pub fn create(prefix: &str) -> Result<ScratchNetns> {
        let name = format!("{prefix}-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(ScratchNetns { name })
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            tracing::warn!("removing bench namespace: {e}");
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let what = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Netns {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Netns {
            what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    // 10.43.200.1 onwards: clear of the kubernetes (10.43.0.1) and DNS (10.43.0.10) IPs.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 200, 1)) + i as u32)
}

fn endpoint_ip(i: usize, j: usize, generation: usize) -> Ipv4Addr {
    // Distinct per service, endpoint and change: 10.42.0.0/16 has room for 65536.
    let n = (i * 16 + j + generation * 7) % 65_000;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 0)) + n as u32 + 1)
}

fn service(ns: &str, i: usize) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("bench-{i}"), "namespace": ns},
        "spec": {
            "clusterIP": cluster_ip(i).to_string(),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }))
}

fn slice(ns: &str, i: usize, ips: &[Ipv4Addr]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true},
                "nodeName": "bench-node",
            })
        })
        .collect();
    from_json(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("bench-{i}"),
            "namespace": ns,
            "labels": {
                model::LABEL_SERVICE_NAME: format!("bench-{i}"),
                "endpointslice.kubernetes.io/managed-by": "skiff-proxy-bench",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    // Built above from fixed shapes; a mismatch is a bug in this file.
    serde_json::from_value(v).expect("bench objects match their types")
}

fn ips(i: usize, per: usize, generation: usize) -> Vec<Ipv4Addr> {
    (0..per).map(|j| endpoint_ip(i, j, generation)).collect()
}

fn settings() -> Settings {
    Settings {
        table: "skiff-proxy-bench".into(),
        cluster_cidr: Some(rules::Ipv4Cidr {
            addr: Ipv4Addr::new(10, 42, 0, 0),
            len: 16,
        }),
        mark: crate::DEFAULT_MARK,
    }
}

/// Programs `opts.services` services in a scratch namespace, then changes one endpoint of a
/// different service `opts.changes` times, each computed and applied as one transaction.
/// Blocking (runs nft); call it off the async workers.
pub fn programming(opts: &Options) -> Result<ProgrammingReport> {
    if opts.services == 0 || opts.endpoints_per_service == 0 {
        return Err(Error::Options(
            "services and endpoints per service must be positive",
        ));
    }
    let netns = ScratchNetns::create("skiff-proxy-bench")?;
    let nft = Nft::in_netns(&netns.name);
    let ns = "bench";
    let settings = settings();
    let services: Vec<Service> = (0..opts.services).map(|i| service(ns, i)).collect();
    let mut slices: Vec<EndpointSlice> = (0..opts.services)
        .map(|i| slice(ns, i, &ips(i, opts.endpoints_per_service, 0)))
        .collect();
    let compute = |slices: &[EndpointSlice]| -> Ruleset {
        let ports = model::desired(&services, slices, "bench-node");
        rules::render(&ports, &settings)
    };

    let started = Instant::now();
    let mut programmed = compute(&slices);
    let script = rules::full(&programmed, &settings);
    nft.apply_blocking(&script)?;
    let full_sync = started.elapsed();
    let full_script_bytes = script.len();

    let mut compute_times = Vec::new();
    let mut sync_times = Vec::new();
    let mut bytes = 0;
    for c in 0..opts.changes {
        let i = (c * 7919) % opts.services;
        let mut moved = ips(i, opts.endpoints_per_service, 0);
        moved[0] = endpoint_ip(i, 0, c + 1);
        slices[i] = slice(ns, i, &moved);
        let started = Instant::now();
        let desired = compute(&slices);
        let script = rules::diff(&programmed, &desired, &settings.table);
        compute_times.push(started.elapsed());
        nft.apply_blocking(&script)?;
        sync_times.push(started.elapsed());
        bytes += script.len();
        programmed = desired;
    }
    nft.delete_table(&settings.table)?;
    Ok(ProgrammingReport {
        services: opts.services,
        endpoints: opts.services * opts.endpoints_per_service,
        full_sync,
        full_script_bytes,
        compute: Summary::of(compute_times),
        sync: Summary::of(sync_times),
        change_script_bytes: bytes / opts.changes.max(1),
    })
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api {
        what,
        source: Box::new(source),
    }
}

/// Creates the services and slices (no selectors: the EndpointSlice controller leaves them
/// alone) in a fresh namespace through `client`, runs the proxy against them in a scratch
/// network namespace, patches one slice at a time and waits for each patch to be applied.
/// Cluster IPs are set explicitly from 10.43.200.1 on. Removes the namespace when done.
pub async fn end_to_end(client: kube::Client, opts: &Options) -> Result<EndToEndReport> {
    if opts.services == 0 || opts.endpoints_per_service == 0 {
        return Err(Error::Options(
            "services and endpoints per service must be positive",
        ));
    }
    let ns = format!("skiff-proxy-bench-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(api_err(format!("creating namespace {ns}")))?;
    let outcome = end_to_end_in(client, opts, &ns).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    outcome
}

async fn end_to_end_in(client: kube::Client, opts: &Options, ns: &str) -> Result<EndToEndReport> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    for i in 0..opts.services {
        svcs.create(&pp, &service(ns, i))
            .await
            .map_err(api_err(format!("creating service bench-{i}")))?;
        slices
            .create(&pp, &slice(ns, i, &ips(i, opts.endpoints_per_service, 0)))
            .await
            .map_err(api_err(format!("creating endpointslice bench-{i}")))?;
    }

    let netns = tokio::task::spawn_blocking(|| ScratchNetns::create("skiff-proxy-e2e"))
        .await
        .map_err(|e| Error::Proxy(e.to_string()))??;
    let metrics = Arc::new(Metrics::default());
    let mut cfg = Config::new("bench-node");
    cfg.table = "skiff-proxy-bench".into();
    cfg.nft = Nft::in_netns(&netns.name);
    cfg.metrics = metrics.clone();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let proxy = tokio::spawn(crate::run(client, cfg, shutdown.clone()));

    let expected = opts.services * (opts.endpoints_per_service + 1);
    poll(Duration::from_secs(120), || {
        metrics.snapshot().chains >= expected
    })
    .await?;
    let initial_sync = started.elapsed();
    metrics.clear_samples();

    let mut write_to_applied = Vec::new();
    for c in 0..opts.changes {
        let i = (c * 7919) % opts.services;
        let mut moved = ips(i, opts.endpoints_per_service, 0);
        moved[0] = endpoint_ip(i, 0, c + 1);
        let before = metrics.snapshot().syncs;
        let patch = Patch::Merge(json!({
            "endpoints": slice(ns, i, &moved).endpoints,
        }));
        let sent = Instant::now();
        slices
            .patch(&format!("bench-{i}"), &PatchParams::default(), &patch)
            .await
            .map_err(api_err(format!("patching endpointslice bench-{i}")))?;
        poll(Duration::from_secs(10), || {
            metrics.snapshot().syncs > before
        })
        .await?;
        write_to_applied.push(sent.elapsed());
        if proxy.is_finished() {
            break;
        }
    }
    shutdown.cancel();
    match proxy.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Proxy(e.to_string())),
        Err(e) => return Err(Error::Proxy(e.to_string())),
    }
    let nft = Nft::in_netns(&netns.name);
    tokio::task::spawn_blocking(move || {
        let r = crate::cleanup_with(&nft, "skiff-proxy-bench");
        drop(netns);
        r
    })
    .await
    .map_err(|e| Error::Proxy(e.to_string()))?
    .map_err(|e| Error::Proxy(e.to_string()))?;
    let snap = metrics.snapshot();
    Ok(EndToEndReport {
        services: opts.services,
        endpoints: opts.services * opts.endpoints_per_service,
        initial_sync,
        write_to_applied: Summary::of(write_to_applied),
        event_to_applied: snap.latency,
        sync: snap.sync,
    })
}

async fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The figures as a table of `name value` lines.
pub fn table(p: Option<&ProgrammingReport>, e: Option<&EndToEndReport>) -> String {
    let mut rows: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut add = |k: &str, v: String| {
        let n = rows.len();
        rows.insert(n, (k.to_string(), v));
    };
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    if let Some(p) = p {
        add("services", p.services.to_string());
        add("endpoints", p.endpoints.to_string());
        add("full_sync_ms", ms(p.full_sync));
        add("full_script_kib", (p.full_script_bytes / 1024).to_string());
        add("change_compute_p50_ms", format!("{:.2}", p.compute.p50_ms));
        add("change_compute_p99_ms", format!("{:.2}", p.compute.p99_ms));
        add("svc_rule_sync_p50_ms", format!("{:.1}", p.sync.p50_ms));
        add("svc_rule_sync_p99_ms", format!("{:.1}", p.sync.p99_ms));
        add("change_script_bytes", p.change_script_bytes.to_string());
    }
    if let Some(e) = e {
        add("e2e_initial_sync_ms", ms(e.initial_sync));
        add(
            "e2e_write_to_applied_p50_ms",
            format!("{:.1}", e.write_to_applied.p50_ms),
        );
        add(
            "e2e_write_to_applied_p99_ms",
            format!("{:.1}", e.write_to_applied.p99_ms),
        );
        add(
            "e2e_event_to_applied_p50_ms",
            format!("{:.1}", e.event_to_applied.p50_ms),
        );
        add(
            "e2e_event_to_applied_p99_ms",
            format!("{:.1}", e.event_to_applied.p99_ms),
        );
        add("e2e_sync_p99_ms", format!("{:.1}", e.sync.p99_ms));
    }
    let width = rows.values().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.values()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
