//! The `skiff` binary: a whole Kubernetes cluster in one program (k3s-style subcommands).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod agent;
mod bench;
mod cluster;
mod control_plane;
mod image_cmd;

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
    /// Join a cluster as a node agent: this machine as a node, or simulated nodes.
    Agent(agent::AgentArgs),
    /// Manage the node's OCI images: import, ls, rm, pull.
    Image(image_cmd::ImageArgs),
    /// A multi-node cluster on this machine, each node in its own network namespace: up,
    /// load, down.
    Cluster(cluster::ClusterArgs),
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
    /// Do not run this machine as a node inside the server (then nodes join with `skiff agent`).
    #[arg(long)]
    disable_agent: bool,
    /// tolerationSeconds of the default `node.kubernetes.io/not-ready` toleration added to pods.
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the default `node.kubernetes.io/unreachable` toleration added to pods.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// The range Services get cluster IPs from; its first address is the `kubernetes`
    /// Service's, and --cluster-dns must lie in it.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = apiserver::service_alloc::parse_service_cidr)]
    service_cidr: apiserver::service_alloc::Ipv4Net,
    /// Node ports of NodePort and LoadBalancer Services.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: apiserver::service_alloc::PortRange,
    /// The address the `kubernetes` Service's endpoints point at (default: --bind-address,
    /// or 127.0.0.1 when that is unspecified).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    #[command(flatten)]
    control: control_plane::ControlPlaneArgs,
    #[command(flatten)]
    node: agent::NodeArgs,
}

/// `/var/lib/skiff` as root, `~/.skiff` otherwise.
pub(crate) fn default_data_dir() -> PathBuf {
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
    // `skiff shim …` (hidden, started by the agent per container) must stay single-threaded:
    // youki forks with a raw clone3. Dispatch it before clap, logging or any runtime start.
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        return runtime::container::shim_main(std::env::args_os().skip(2).collect());
    }
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
            // clap puts the details of some errors on the lines after a trailing colon.
            let mut lines = msg.lines().map(str::trim).filter(|l| {
                !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
            });
            let head = lines
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_string();
            let first = if head.ends_with(':') {
                format!("{head} {}", lines.collect::<Vec<_>>().join(" "))
            } else {
                head
            };
            eprintln!("skiff: {first} (see skiff --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Server(args) => run_server(args),
        Command::Kubectl { args } => run_kubectl(args),
        Command::Bench(args) => bench::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Image(args) => image_cmd::run(args),
        Command::Cluster(args) => cluster::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_server(args: ServerArgs) -> Result<()> {
    if let Some(ns) = &args.node.node_netns {
        agent::enter_node_netns(ns)?;
    }
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
            default_toleration_seconds: args.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds: args.default_unreachable_toleration_seconds,
            services: apiserver::service_alloc::Ranges {
                service_cidr: args.service_cidr,
                node_ports: args.service_node_port_range,
                cluster_dns: args.node.cluster_dns,
            },
            advertise_address: args.advertise_address,
        };
        let cluster_cidr = controllers::nodeipam::parse_cluster_cidr(&args.node.cluster_cidr)?;
        args.control.check(cluster_cidr)?;
        let running = apiserver::start(cfg).await?;
        let loops = CancellationToken::new();
        let mut tasks =
            control_plane::start(&running.server, &args.control, cluster_cidr, loops.clone())?;
        if !args.disable_agent {
            // The embedded agent: this machine as a node, talking to the API in-process.
            let agent_dir = data_dir.join("agent");
            let opts = args.node.options(&agent_dir, &running.server.ca_cert_pem)?;
            let client = control_plane::loopback_client(
                &running.server,
                &format!("node:{}", opts.cfg.node_name),
            );
            let stop = loops.clone();
            tasks.spawn(async move {
                if let Err(e) = kubelet::node::real::start(client, opts, stop).await {
                    tracing::error!("node agent stopped: {e:#}");
                }
            });
        }
        eprintln!("skiff: API server listening on https://{}", running.addr);
        eprintln!(
            "skiff: kubeconfig written to {}",
            running.kubeconfig.display()
        );
        eprintln!("skiff: ready in {} ms", running.ready_after.as_millis());
        wait_for_signal().await;
        eprintln!("skiff: shutting down");
        // Control loops first (they release their Leases through the API), then the server.
        loops.cancel();
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        running.shutdown().await?;
        eprintln!("skiff: store closed");
        Ok(())
    })
}

pub(crate) async fn wait_for_signal() {
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
