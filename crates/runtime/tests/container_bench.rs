//! Figures for the container runtime (prints a table; asserts nothing about speed): start
//! latency (shim spawned → process running), exec latency, and the shim's resident memory.
//! `cargo test -p runtime --test container_bench` (as root). The shim is this test binary
//! unless `SKIFF_SHIM_BIN` names a `skiff` binary to use (`<bin> shim …`) instead.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use runtime::container::{ExecSpec, Runtime, RuntimeKind, ShimCommand};
use support::{Fixture, TestFn};

const RUNS: usize = 50;

fn main() -> ExitCode {
    if let Some(code) = support::dispatch_shim() {
        return code;
    }
    let tests: &[(&str, TestFn)] = &[("bench_table", || Box::pin(bench()))];
    support::run_tests(tests)
}

fn shim() -> Result<(ShimCommand, String)> {
    match std::env::var_os("SKIFF_SHIM_BIN") {
        Some(bin) => Ok((
            ShimCommand {
                program: bin.clone().into(),
                args: vec!["shim".into()],
            },
            format!("{} shim", bin.to_string_lossy()),
        )),
        None => Ok((support::shim_command()?, "test binary".into())),
    }
}

fn fixture(name: &str, kind: RuntimeKind) -> Result<Fixture> {
    let mut f = Fixture::with_kind(name, kind.clone())?;
    f.rt = Runtime::new(f.rt.root().to_path_buf(), shim()?.0, kind)?;
    Ok(f)
}

struct Row {
    what: String,
    samples: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn starts(f: &Fixture, name: &str, args: &[&str]) -> Result<Row> {
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let spec = f.spec(&format!("{name}{i}"), args);
        let t0 = Instant::now();
        f.rt.start(&spec).await?;
        samples.push(t0.elapsed());
        f.remove(&spec.id).await?;
    }
    Ok(Row {
        what: format!("start `{}` ({})", args.join(" "), f.name),
        samples,
    })
}

async fn bench() -> Result<()> {
    let (_, shim_name) = shim()?;
    let mut rows = Vec::new();
    let f = fixture("bench", RuntimeKind::Embedded)?;
    rows.push(starts(&f, "true", &["true"]).await?);
    rows.push(starts(&f, "sleep", &["sleep", "1000"]).await?);

    // Exec into one running container.
    let target = f.spec("exec", &["sleep", "1000"]);
    f.rt.start(&target).await?;
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let mut p =
            f.rt.exec(
                &target.id,
                &ExecSpec {
                    args: vec!["true".into()],
                    ..Default::default()
                },
            )
            .await?;
        ensure!(p.wait().await? == 0);
        samples.push(t0.elapsed());
    }
    rows.push(Row {
        what: "exec `true`, start to exit (bench)".into(),
        samples,
    });

    // Shim memory with 20 idle containers.
    let mut rss = Vec::new();
    for i in 0..20 {
        let spec = f.spec(&format!("idle{i}"), &["sleep", "1000"]);
        f.rt.start(&spec).await?;
        let pid = f.rt.shim_pid(&spec.id)?.context("no shim pid")?;
        rss.push(vm_rss_kb(pid)?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rss_settled = Vec::new();
    let mut anon = Vec::new();
    let mut pss = Vec::new();
    for (id, ..) in f.rt.list()? {
        if id.contains("idle")
            && let Some(pid) = f.rt.shim_pid(&id)?
        {
            rss_settled.push(vm_rss_kb(pid)?);
            anon.push(status_kb(pid, "RssAnon")?);
            pss.push(pss_kb(pid)?);
        }
    }

    if std::path::Path::new("/usr/sbin/runc").exists() {
        let r = fixture("runc", RuntimeKind::Runc("/usr/sbin/runc".into()))?;
        rows.push(starts(&r, "sleep", &["sleep", "1000"]).await?);
    }

    println!("\ncontainer runtime figures (shim: {shim_name}; {RUNS} runs each, sequential)");
    println!("| what | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---|---|---|---|");
    for r in &mut rows {
        r.samples.sort();
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what,
            ms(pct(&r.samples, 0.50)),
            ms(pct(&r.samples, 0.99)),
            ms(r.samples[0]),
            ms(*r.samples.last().unwrap_or(&Duration::ZERO)),
        );
    }
    rss_settled.sort();
    let avg = rss_settled.iter().sum::<u64>() as f64 / rss_settled.len().max(1) as f64;
    println!(
        "| shim VmRSS, 20 idle containers | median {} KiB | max {} KiB | min {} KiB | mean {:.0} KiB |",
        rss_settled.get(rss_settled.len() / 2).copied().unwrap_or(0),
        rss_settled.last().copied().unwrap_or(0),
        rss_settled.first().copied().unwrap_or(0),
        avg
    );
    anon.sort();
    println!(
        "| shim RssAnon (private memory) | median {} KiB | max {} KiB | | |",
        anon.get(anon.len() / 2).copied().unwrap_or(0),
        anon.last().copied().unwrap_or(0),
    );
    pss.sort();
    println!(
        "| shim Pss (RSS with shared pages divided among their users) | median {} KiB | max {} KiB | | |",
        pss.get(pss.len() / 2).copied().unwrap_or(0),
        pss.last().copied().unwrap_or(0),
    );
    Ok(())
}

fn pss_kb(pid: i32) -> Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no Pss for pid {pid}"))
}

fn vm_rss_kb(pid: i32) -> Result<u64> {
    status_kb(pid, "VmRSS")
}

/// A `kB` field of /proc/<pid>/status.
fn status_kb(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}
