//! Cluster DNS benchmark: a real in-process API server with one Service, the DNS server on
//! loopback, and one client asking the Service's A record over UDP — first one query at a
//! time (latency), then with several in flight (throughput). Prints a table.
//!
//! `cargo run --release -p dns --example dns_bench [seconds per run, default 3]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const NAME: &str = "bench.default.svc.cluster.local.";
/// A hard cap on queries per run, whatever the duration.
const MAX_QUERIES: usize = 2_000_000;

fn request(id: u16) -> Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(NAME)?, RecordType::A));
    Ok(m.to_vec()?)
}

fn check(buf: &[u8]) -> Result<u16> {
    let m = Message::from_vec(buf)?;
    if m.metadata.response_code != ResponseCode::NoError || m.answers.len() != 1 {
        bail!(
            "unexpected answer: {:?} {:?}",
            m.metadata.response_code,
            m.answers
        );
    }
    Ok(m.metadata.id)
}

struct Run {
    queries: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `in_flight` queries outstanding at once from one socket, for `duration`.
async fn run(server: SocketAddr, in_flight: usize, duration: Duration) -> Result<Run> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let requests: Vec<Vec<u8>> = (0..=u16::MAX).map(request).collect::<Result<_>>()?;
    let mut sent_at = vec![None::<Instant>; 65536];
    let mut next_id: u16 = 0;
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    let mut outstanding = 0;
    let mut sent = 0usize;
    loop {
        let stop = start.elapsed() >= duration || sent >= MAX_QUERIES;
        while !stop && outstanding < in_flight {
            socket.send(&requests[usize::from(next_id)]).await?;
            sent_at[usize::from(next_id)] = Some(Instant::now());
            next_id = next_id.wrapping_add(1);
            outstanding += 1;
            sent += 1;
        }
        if outstanding == 0 {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .context("an answer took over 2s (lost on loopback?)")??;
        let id = check(&buf[..n])?;
        if let Some(at) = sent_at[usize::from(id)].take() {
            latencies.push(at.elapsed());
            outstanding -= 1;
        }
    }
    Ok(Run {
        queries: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .context("seconds per run must be a whole number")?,
        None => 3,
    };
    let server = testkit::TestServer::start().await?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench"},
        "spec": {"clusterIP": "10.43.9.9", "ports": [{"port": 80}]},
    }))?;
    Api::<Service>::namespaced(server.client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    let cfg = dns::Config {
        listen: vec!["127.0.0.1:0".parse()?],
        upstream: Vec::new(),
        ..dns::Config::default()
    };
    let shutdown = CancellationToken::new();
    let dns = dns::start(server.client.clone(), cfg, shutdown.clone()).await?;
    dns.synced().await;
    let at = dns.addrs()[0];
    // Warm up (and fail early on a wrong answer).
    run(at, 1, Duration::from_millis(300)).await?;

    println!(
        "cached A lookup of {NAME} over UDP on loopback, one client socket, {seconds} s per row"
    );
    println!(
        "{:>9} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "in flight", "queries", "queries/s", "p50", "p99", "p99.9"
    );
    for in_flight in [1, 8, 32] {
        let mut r = run(at, in_flight, Duration::from_secs(seconds)).await?;
        r.latencies.sort();
        println!(
            "{:>9} {:>10} {:>12.0} {:>9.1?} {:>9.1?} {:>9.1?}",
            in_flight,
            r.queries,
            r.queries as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.latencies, 0.50),
            percentile(&r.latencies, 0.99),
            percentile(&r.latencies, 0.999),
        );
    }
    shutdown.cancel();
    dns.wait().await?;
    server.shutdown().await
}
