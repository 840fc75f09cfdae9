//! Setup and teardown latency of 100 sandboxes, one at a time, printed as a table (run with
//! `--nocapture` to see it). Figures, not a timed assertion: the test checks only that every
//! sandbox worked and nothing was left.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use network::PodNetwork;
use support::TestNode;

const SANDBOXES: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "| {name:<8} | {:>4} | {:>8} | {:>8} | {:>8} | {:>8} |",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(mean),
        ms(samples[samples.len() - 1]),
    )
}

#[tokio::test]
async fn setup_and_teardown_latency_of_100_sandboxes() -> Result<()> {
    let node = TestNode::new("latency");
    let net = PodNetwork::new(node.config("10.42.6.0/24")).await?;
    let ids: Vec<String> = (0..SANDBOXES).map(|i| format!("bench-{i}")).collect();

    let mut setups = Vec::with_capacity(SANDBOXES);
    let mut sandboxes = Vec::with_capacity(SANDBOXES);
    for id in &ids {
        let started = Instant::now();
        sandboxes.push(net.setup(id).await?);
        setups.push(started.elapsed());
    }
    ensure!(node.links().len() == SANDBOXES + 2, "one veth per sandbox");
    let mut teardowns = Vec::with_capacity(SANDBOXES);
    for id in &ids {
        let started = Instant::now();
        net.teardown(id).await?;
        teardowns.push(started.elapsed());
    }
    ensure!(net.sandboxes()?.is_empty());
    assert_eq!(node.links(), ["lo", "skiff0"]);

    println!("\npod sandbox latency, {SANDBOXES} sandboxes one after another (ms)");
    println!("| step     |    n |      p50 |      p99 |     mean |      max |");
    println!("|----------|------|----------|----------|----------|----------|");
    println!("{}", row("setup", setups));
    println!("{}", row("teardown", teardowns));
    net.destroy().await?;
    Ok(())
}
