//! The store alone: skiff's embedded backend next to etcd (Debian's `etcd-server`, started here
//! on loopback with its data on the same disk), both driven through the same `Store` trait with
//! the same concurrency. Writes are durable in both (the embedded store syncs its log before it
//! acknowledges; etcd syncs its WAL). Reads and watches of both are served from the memory the
//! trait keeps above each backend (the embedded store's state; the etcd backend's watch-fed
//! mirror), as the API server meets them; etcd's own Range requests are not what is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use store::{ListOptions, Store};

use super::{BenchArgs, Figure, ms, percentile};

/// Concurrent tasks issuing requests, like the API server's handlers.
const CONCURRENCY: usize = 50;

struct Figures {
    creates_per_s: f64,
    updates_per_s: f64,
    gets_per_s: f64,
    list_ms: f64,
    watch_p50: Duration,
    watch_p99: Duration,
}

fn object(i: usize, generation: u64) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": format!("cm-{i}"), "namespace": "bench", "generation": generation },
        "data": { "key": "value", "other": "some more bytes to be a realistic small object" },
    })
}

fn key(i: usize) -> String {
    format!("/registry/configmaps/bench/cm-{i:06}")
}

/// Runs `f(i)` for `i` in `0..n` on `CONCURRENCY` tasks; returns the wall time.
async fn spread<F, Fut>(n: usize, f: F) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                f(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

async fn measure(s: Arc<dyn Store>, n: usize, list_keys: usize) -> Result<Figures> {
    let st = s.clone();
    let wall = spread(n, move |i| {
        let st = st.clone();
        async move {
            st.create(&key(i), object(i, 1)).await?;
            Ok(())
        }
    })
    .await?;
    let creates_per_s = n as f64 / wall.as_secs_f64();

    // Compare-and-swap updates: read the key's revision, write on it.
    let st = s.clone();
    let wall = spread(n, move |i| {
        let st = st.clone();
        async move {
            let current = st.get(&key(i))?.context("a created key is missing")?;
            st.update(&key(i), object(i, 2), Some(current.mod_revision))
                .await?;
            Ok(())
        }
    })
    .await?;
    let updates_per_s = n as f64 / wall.as_secs_f64();

    let reads = n * 10;
    let st = s.clone();
    let wall = spread(reads, move |i| {
        let st = st.clone();
        async move {
            st.get(&key((i * 7919) % n))?
                .context("a created key is missing")?;
            Ok(())
        }
    })
    .await?;
    let gets_per_s = reads as f64 / wall.as_secs_f64();

    // A prefix list of `list_keys` keys (a second prefix, filled first).
    let st = s.clone();
    spread(list_keys, move |i| {
        let st = st.clone();
        async move {
            st.create(&format!("/registry/pods/list/p-{i:06}"), object(i, 1))
                .await?;
            Ok(())
        }
    })
    .await?;
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let got = s.list(&ListOptions {
            prefix: "/registry/pods/list/",
            ..Default::default()
        })?;
        lists.push(t.elapsed());
        if got.items.len() != list_keys {
            bail!("listed {} of {list_keys} keys", got.items.len());
        }
    }
    lists.sort();

    // Watch delivery: a create's call until its event is read from a watch.
    let mut w = s.watch("/registry/watched/", s.revision())?;
    let mut lat = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let write = s.create(&format!("/registry/watched/w-{i}"), object(i, 1));
        let (written, event) = tokio::join!(write, async {
            tokio::time::timeout(Duration::from_secs(10), w.rx.recv()).await
        });
        written?;
        event
            .context("a watch event did not arrive")?
            .context("the watch ended")?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(Figures {
        creates_per_s,
        updates_per_s,
        gets_per_s,
        list_ms: ms(percentile(&lists, 0.5)),
        watch_p50: percentile(&lat, 0.5),
        watch_p99: percentile(&lat, 0.99),
    })
}

pub async fn bench(args: &BenchArgs) -> Result<Vec<Figure>> {
    let n = args.creates;
    let list_keys = args.list_objects;
    let dir = tempfile::tempdir()?;
    let embedded: Arc<dyn Store> = store::EmbeddedStore::open(dir.path(), Default::default())?;
    let ours = measure(embedded.clone(), n, list_keys).await?;
    embedded.close().await?;

    let etcd = store::etcd::LocalEtcd::start()
        .await
        .context("the store benchmark measures etcd next to skiff's store")?;
    let remote: Arc<dyn Store> =
        store::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/skiff").await?;
    let peer = measure(remote.clone(), n, list_keys).await?;
    remote.close().await?;
    drop(etcd);

    let through = format!("through the Store trait, {CONCURRENCY} concurrent tasks");
    Ok(vec![
        Figure::new("store_creates_per_s", ours.creates_per_s, "1/s")
            .about(format!(
                "{n} durable creates (synced before acknowledged), {through}"
            ))
            .peer("etcd", peer.creates_per_s)
            .anchor(
                "etcd performance guide: a 3-member cluster does > 30,000 req/s under heavy load",
            )
            .at_least(1_000.0),
        Figure::new("store_updates_per_s", ours.updates_per_s, "1/s")
            .about(format!(
                "{n} compare-and-swap updates (read revision, write on it), {through}"
            ))
            .peer("etcd", peer.updates_per_s)
            .at_least(1_000.0),
        Figure::new("store_gets_per_s", ours.gets_per_s, "1/s")
            .about("point reads from the trait's in-memory state (etcd: its watch-fed mirror)")
            .peer("etcd", peer.gets_per_s),
        Figure::new("store_list_10k_ms", ours.list_ms, "ms")
            .about(format!("prefix list of {list_keys} keys, median of 5"))
            .peer("etcd", peer.list_ms),
        Figure::new("store_watch_p50_ms", ms(ours.watch_p50), "ms")
            .about("a create's call until its event is read from a watch (200 creates)")
            .peer("etcd", ms(peer.watch_p50)),
        Figure::new("store_watch_p99_ms", ms(ours.watch_p99), "ms")
            .peer("etcd", ms(peer.watch_p99))
            .at_most(100.0),
    ])
}
