//! Prints the proxy's rule programming figures as a table: syncs without an API server, then
//! (unless `--no-api`) changes through an in-process API server. Needs root (it creates a
//! scratch network namespace and runs nft in it).
//!
//! `cargo run --release -p proxy --example proxy_bench -- [--services N] [--endpoints M]
//! [--changes K] [--no-api]`

use anyhow::{Context as _, Result, bail};
use proxy::bench;

fn parse() -> Result<(bench::Options, bool)> {
    let mut opts = bench::Options::default();
    let mut api = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name}: not a number: {v:?}"))
        };
        match a.as_str() {
            "--services" => opts.services = value("--services")?,
            "--endpoints" => opts.endpoints_per_service = value("--endpoints")?,
            "--changes" => opts.changes = value("--changes")?,
            "--no-api" => api = false,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok((opts, api))
}

#[tokio::main]
async fn main() -> Result<()> {
    let (opts, api) = parse()?;
    let o = opts.clone();
    let programming = tokio::task::spawn_blocking(move || bench::programming(&o)).await??;
    let e2e = if api {
        let server = testkit::TestServer::start().await?;
        let report = bench::end_to_end(server.client.clone(), &opts).await?;
        server.shutdown().await?;
        Some(report)
    } else {
        None
    };
    print!("{}", bench::table(Some(&programming), e2e.as_ref()));
    Ok(())
}
