//! The `skiff` binary: a whole Kubernetes cluster in one program (k3s-style subcommands).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Kubernetes in one binary",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the API server over the embedded store.
    Server(ServerArgs),
    /// Run kubectl against this machine's skiff server (uses its admin kubeconfig).
    Kubectl {
        /// Arguments passed to kubectl as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the API server and print a table of figures.
    Bench(bench::BenchArgs),
}

#[derive(Parser, Clone)]
struct ServerArgs {
    /// Where the server keeps its store, credentials and kubeconfig.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    https_listen_port: u16,
    /// Where to write the admin kubeconfig (default: <data-dir>/kubeconfig.yaml).
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Extra host names or IPs for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Do not run a node agent in the server (the agent arrives with the node issue; today the
    /// server never runs one, so this changes nothing yet).
    #[arg(long)]
    disable_agent: bool,
}

/// `/var/lib/skiff` as root, `~/.skiff` otherwise.
fn default_data_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/skiff");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".skiff"))
        .unwrap_or_else(|| PathBuf::from(".skiff"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, as a CLI user expects: the first line of clap's message.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("skiff: {first} (see skiff --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Server(args) => run_server(args),
        Command::Kubectl { args } => run_kubectl(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_server(args: ServerArgs) -> Result<()> {
    init_logging();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let cfg = apiserver::Config {
            data_dir: data_dir.clone(),
            bind: SocketAddr::new(args.bind_address, args.https_listen_port),
            kubeconfig: args.write_kubeconfig.clone(),
            tls_sans: args.tls_san.clone(),
            store: store::Options::default(),
        };
        let running = apiserver::start(cfg).await?;
        eprintln!("skiff: API server listening on https://{}", running.addr);
        eprintln!(
            "skiff: kubeconfig written to {}",
            running.kubeconfig.display()
        );
        eprintln!("skiff: ready in {} ms", running.ready_after.as_millis());
        wait_for_signal().await;
        eprintln!("skiff: shutting down");
        running.shutdown().await?;
        eprintln!("skiff: store closed");
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run_kubectl(args: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("kubectl");
    if std::env::var_os("KUBECONFIG").is_none() {
        let data_dir = std::env::var_os("SKIFF_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_data_dir);
        cmd.env("KUBECONFIG", data_dir.join("kubeconfig.yaml"));
    }
    let err = cmd.args(args).exec();
    Err(err).context("running kubectl")
}
