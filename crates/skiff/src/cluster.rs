//! `skiff cluster up|load|down`: a real multi-node cluster on one machine, like kind without
//! Docker. One `skiff server` on the host and N `skiff agent`s, each node in its own network
//! namespace (`skiff-<name>-<i>` under /run/netns) with one end of a veth in it (`eth0`, the
//! node's address) and the other on a bridge the host also sits on. The server listens on the
//! host's address on that bridge, so the host reaches the API and every node's address, and
//! nothing else is connected: no route, forwarding or NAT towards the host's uplink.
//!
//! The processes are started detached (own process group, output in `<dir>/<what>.log`) and
//! recorded with their start times in `<dir>/cluster.json`, so `down` ends exactly the
//! processes `up` started. `down` then removes every container of every node (killing it,
//! unmounting its rootfs, deleting its cgroups), unmounts whatever remains under the nodes'
//! directories, deletes the namespaces (their links, routes and nftables tables go with them)
//! and the bridge, and finally stops the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a cluster: one server and N nodes, each node in its own network namespace.
    Up(UpArgs),
    /// Import an image tarball into every node of a cluster (like `kind load image-archive`).
    Load(LoadArgs),
    /// Stop a cluster and remove everything it made on this machine.
    Down(Target),
}

#[derive(Args, Clone)]
struct Target {
    /// The cluster's name.
    #[arg(long, default_value = "skiff", value_parser = cluster_name)]
    name: String,
    /// Where the cluster keeps its state, logs and kubeconfig (default:
    /// <skiff data dir>/clusters/<name>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    target: Target,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    nodes: u32,
    /// The /24 the host and the nodes share (default: 172.31.X.0/24, X from the name).
    #[arg(long)]
    subnet: Option<String>,
    /// Image tarballs to import into every node before it starts.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Extra arguments for the server, e.g. `--server-arg=--node-monitor-grace-period=20s`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Extra arguments for every agent.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// The image tarball (docker-archive or OCI layout; plain, gzip or zstd).
    file: PathBuf,
}

fn cluster_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 20
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected up to 20 lowercase letters, digits and '-', starting with a letter".into())
    }
}

/// A process `up` started: its PID and start time (so a reused PID is never signalled).
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn of(child: &std::process::Child) -> Result<Proc> {
        let pid = child.id() as i32;
        let start = start_time(pid).context("reading a started process's start time")?;
        Ok(Proc { pid, start })
    }

    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
    fn stop(&self, grace: Duration) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if !self.alive() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Field 22 of /proc/<pid>/stat, or `None` when there is no such (non-zombie) process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[derive(Serialize, Deserialize, Debug)]
struct NodeState {
    name: String,
    netns: String,
    /// The host's end of the node's veth.
    veth: String,
    ip: Ipv4Addr,
    proc: Option<Proc>,
}

#[derive(Serialize, Deserialize, Debug)]
struct State {
    name: String,
    bridge: String,
    host_ip: Ipv4Addr,
    prefix_len: u8,
    server: Option<Proc>,
    port: u16,
    nodes: Vec<NodeState>,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    fn load(dir: &Path) -> Result<Option<State>> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("reading {}", Self::path(dir).display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", Self::path(dir).display())),
        }
    }

    /// Written after every step of `up`, so a failed or interrupted `up` can be taken down.
    fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, Self::path(dir))
            .with_context(|| format!("writing {}", Self::path(dir).display()))
    }

    fn node_dir(dir: &Path, node: &str) -> PathBuf {
        dir.join(node)
    }
}

fn cluster_dir(t: &Target) -> PathBuf {
    t.data_dir
        .clone()
        .unwrap_or_else(|| crate::default_data_dir().join("clusters").join(&t.name))
}

pub fn run(args: ClusterArgs) -> Result<()> {
    match args.command {
        ClusterCommand::Up(a) => up(a),
        ClusterCommand::Load(a) => load(a),
        ClusterCommand::Down(t) => down(&t),
    }
}

/// A short tag for link names (15 bytes at most): the same for one cluster dir and name.
fn link_tag(name: &str, dir: &Path) -> String {
    let h = fnv1a(format!("{name}\0{}", dir.display()).as_bytes());
    format!("{:06x}", h & 0xff_ffff)
}

fn default_subnet(name: &str) -> (Ipv4Addr, u8) {
    // 172.31.0.0/16 is private and rarely routed; the third octet spreads clusters apart.
    (
        Ipv4Addr::new(172, 31, (fnv1a(name.as_bytes()) >> 24) as u8, 0),
        24,
    )
}

/// 32-bit FNV-1a: a fixed, dependency-free hash for names (nothing secret about them).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8)> {
    let c: network::Ipv4Cidr = s
        .parse()
        .map_err(|e| anyhow::anyhow!("--subnet {s:?}: {e}"))?;
    if c.prefix_len() > 26 {
        bail!("--subnet {s:?}: too small (at most /26)");
    }
    Ok((c.network(), c.prefix_len()))
}

/// Runs `ip` with `args`; fails with its message.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `subnet` overlaps an address or route the host already has.
fn subnet_in_use(net: Ipv4Addr, len: u8) -> Result<Option<String>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .context("running ip route")?;
    let ours = network::Ipv4Cidr::new(net, len).map_err(|e| anyhow::anyhow!("{e}"))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(dst) = line
            .split_whitespace()
            .find(|w| w.contains('.') && !w.starts_with("local") && !w.starts_with("broadcast"))
        else {
            continue;
        };
        let theirs: Option<network::Ipv4Cidr> = if dst.contains('/') {
            dst.parse().ok()
        } else {
            dst.parse::<Ipv4Addr>()
                .ok()
                .and_then(|a| network::Ipv4Cidr::new(a, 32).ok())
        };
        let Some(theirs) = theirs else { continue };
        if theirs.prefix_len() == 0 {
            continue;
        }
        if ours.contains(theirs.network()) || theirs.contains(ours.network()) {
            return Ok(Some(line.to_string()));
        }
    }
    Ok(None)
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("skiff cluster needs root (network namespaces, containers)");
    }
    Ok(())
}

fn spawn_detached(args: &[String], log: &Path) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the skiff executable")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .context("starting skiff")
}

fn up(a: UpArgs) -> Result<()> {
    require_root()?;
    let t = &a.target;
    let dir = cluster_dir(t);
    if let Some(old) = State::load(&dir)? {
        if old.server.is_some_and(|p| p.alive()) {
            bail!(
                "cluster {} is already up (skiff cluster down --name {} first)",
                old.name,
                old.name
            );
        }
        eprintln!(
            "skiff: cleaning up what is left of an earlier cluster {}",
            old.name
        );
        down(t)?;
    }
    for img in &a.images {
        if !img.is_file() {
            bail!("--image {}: no such file", img.display());
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (net, len) = match &a.subnet {
        Some(s) => parse_subnet(s)?,
        None => default_subnet(&t.name),
    };
    if let Some(route) = subnet_in_use(net, len)? {
        bail!("subnet {net}/{len} overlaps the host's route {route:?}: pass another --subnet");
    }
    let base = u32::from(net);
    let host_ip = Ipv4Addr::from(base + 1);
    let tag = link_tag(&t.name, &dir);
    let mut state = State {
        name: t.name.clone(),
        bridge: format!("skc{tag}"),
        host_ip,
        prefix_len: len,
        server: None,
        port: 6443,
        nodes: Vec::new(),
    };
    state.save(&dir)?;
    match bring_up(&a, &dir, &mut state) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("skiff: cluster up failed: {e:#}; taking down what was started");
            if let Err(d) = down(t) {
                eprintln!("skiff: cleaning up failed too: {d:#}");
            }
            Err(e)
        }
    }
}

fn bring_up(a: &UpArgs, dir: &Path, state: &mut State) -> Result<()> {
    let t = &a.target;
    let cidr = format!("{}/{}", state.host_ip, state.prefix_len);
    // Frames between the nodes are bridged past the host's own firewall (a FORWARD drop policy
    // of another tool must not cut the cluster's nodes apart) and its conntrack.
    ip(&[
        "link",
        "add",
        &state.bridge,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
    ])?;
    ip(&["addr", "add", &cidr, "dev", &state.bridge])?;
    ip(&["link", "set", &state.bridge, "up"])?;
    // The API server's port on the host's bridge address.
    state.port = free_port(state.host_ip, 6443)?;
    let server_dir = dir.join("server");
    let mut args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        server_dir.display().to_string(),
        "--bind-address".into(),
        state.host_ip.to_string(),
        "--https-listen-port".into(),
        state.port.to_string(),
        "--write-kubeconfig".into(),
        dir.join("kubeconfig.yaml").display().to_string(),
        "--disable-agent".into(),
    ];
    args.extend(a.server_args.iter().cloned());
    let _ = std::fs::remove_file(dir.join("kubeconfig.yaml"));
    let server = spawn_detached(&args, &dir.join("server.log"))?;
    state.server = Some(Proc::of(&server)?);
    state.save(dir)?;
    let token_path = server_dir.join("server").join("token");
    wait_until(Duration::from_secs(60), "the API server to start", || {
        if !state.server.is_some_and(|p| p.alive()) {
            bail!(
                "the server exited: see {}",
                dir.join("server.log").display()
            );
        }
        Ok(token_path.exists()
            && dir.join("kubeconfig.yaml").exists()
            && std::net::TcpStream::connect_timeout(
                &SocketAddr::new(state.host_ip.into(), state.port),
                Duration::from_millis(200),
            )
            .is_ok())
    })?;
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?;
    let url = format!("https://{}:{}", state.host_ip, state.port);
    let tag = &state.bridge[3..];
    for i in 1..=a.nodes {
        let name = format!("{}-{i}", t.name);
        let netns = format!("skiff-{}-{i}", t.name);
        let veth = format!("skc{tag}v{i}");
        let node_ip = Ipv4Addr::from(u32::from(state.host_ip) + i);
        state.nodes.push(NodeState {
            name: name.clone(),
            netns: netns.clone(),
            veth: veth.clone(),
            ip: node_ip,
            proc: None,
        });
        state.save(dir)?;
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &veth, "master", &state.bridge, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{node_ip}/{}", state.prefix_len),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let node_dir = State::node_dir(dir, &name);
        let agent_dir = node_dir.join("agent");
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("creating {}", agent_dir.display()))?;
        for img in &a.images {
            import_into(&agent_dir, img)?;
        }
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            url.clone(),
            "--token".into(),
            token.trim().to_string(),
            "--data-dir".into(),
            node_dir.display().to_string(),
            "--node-name".into(),
            name.clone(),
            "--node-ip".into(),
            node_ip.to_string(),
            "--node-netns".into(),
            netns.clone(),
        ];
        args.extend(a.agent_args.iter().cloned());
        let agent = spawn_detached(&args, &dir.join(format!("{name}.log")))?;
        if let Some(n) = state.nodes.last_mut() {
            n.proc = Some(Proc::of(&agent)?);
        }
        state.save(dir)?;
    }
    wait_nodes_ready(dir, state)?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    println!(
        "cluster {} is up: {} node(s), API server {url}",
        state.name,
        state.nodes.len()
    );
    println!("export KUBECONFIG={}", kubeconfig.display());
    Ok(())
}

fn free_port(ip: Ipv4Addr, preferred: u16) -> Result<u16> {
    if std::net::TcpListener::bind((ip, preferred)).is_ok() {
        return Ok(preferred);
    }
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_nodes_ready(dir: &Path, state: &State) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(cfg)?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            for n in &state.nodes {
                if !n.proc.is_some_and(|p| p.alive()) {
                    bail!(
                        "the agent of node {} exited: see {}",
                        n.name,
                        dir.join(format!("{}.log", n.name)).display()
                    );
                }
            }
            let ready = match nodes.list(&Default::default()).await {
                Ok(list) => state
                    .nodes
                    .iter()
                    .filter(|n| {
                        list.items.iter().any(|k| {
                            k.metadata.name.as_deref() == Some(n.name.as_str())
                                && crate::cluster::is_ready(k)
                        })
                    })
                    .count(),
                Err(_) => 0,
            };
            if ready == state.nodes.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for the nodes to be Ready ({ready} of {} are)",
                    state.nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

pub(crate) fn is_ready(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn import_into(agent_dir: &Path, file: &Path) -> Result<()> {
    let store = runtime::image::ImageStore::open(agent_dir)
        .with_context(|| format!("opening the image store in {}", agent_dir.display()))?;
    crate::image_cmd::import(&store, file)
}

fn load(a: LoadArgs) -> Result<()> {
    let dir = cluster_dir(&a.target);
    let Some(state) = State::load(&dir)? else {
        bail!("no cluster {} in {}", a.target.name, dir.display());
    };
    if !a.file.is_file() {
        bail!("{}: no such file", a.file.display());
    }
    for n in &state.nodes {
        eprintln!("skiff: loading {} into node {}", a.file.display(), n.name);
        import_into(&State::node_dir(&dir, &n.name).join("agent"), &a.file)?;
    }
    Ok(())
}

fn down(t: &Target) -> Result<()> {
    require_root()?;
    let dir = cluster_dir(t);
    let Some(state) = State::load(&dir)? else {
        eprintln!(
            "skiff: no cluster {} in {}: nothing to do",
            t.name,
            dir.display()
        );
        return Ok(());
    };
    let mut first_err: Option<anyhow::Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            eprintln!("skiff: {e:#}");
            first_err.get_or_insert(e);
        }
    };
    // Agents first: they would restart what is removed under them.
    for n in &state.nodes {
        if let Some(p) = n.proc {
            p.stop(Duration::from_secs(10));
        }
    }
    for n in &state.nodes {
        note(wipe_node(&dir, n));
    }
    for n in &state.nodes {
        if Path::new("/run/netns").join(&n.netns).exists() {
            note(ip(&["netns", "del", &n.netns]));
        }
        // The veth goes with its peer; a half-made one may remain on the host side.
        if Path::new("/sys/class/net").join(&n.veth).exists() {
            note(ip(&["link", "del", &n.veth]));
        }
    }
    if Path::new("/sys/class/net").join(&state.bridge).exists() {
        note(ip(&["link", "del", &state.bridge]));
    }
    if let Some(p) = state.server {
        p.stop(Duration::from_secs(15));
    }
    if first_err.is_none() {
        for n in &state.nodes {
            let _ = std::fs::remove_dir_all(State::node_dir(&dir, &n.name));
            let _ = std::fs::remove_file(dir.join(format!("{}.log", n.name)));
        }
        for p in ["server", "server.log", "kubeconfig.yaml", "cluster.json"] {
            let path = dir.join(p);
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
        let _ = std::fs::remove_dir(&dir);
        eprintln!("skiff: cluster {} is down", state.name);
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e.context(format!("taking cluster {} down", state.name))),
    }
}

/// Removes what node `n` made on this machine: its containers (killed; their rootfs mounts
/// and cgroups removed), then every mount left under its directories.
fn wipe_node(dir: &Path, n: &NodeState) -> Result<()> {
    let node_dir = State::node_dir(dir, &n.name);
    let containers = node_dir.join("agent").join("containers");
    if containers.is_dir() {
        let shim = runtime::container::ShimCommand::current_exe()?;
        let rt = runtime::container::Runtime::new(
            containers.clone(),
            shim,
            runtime::container::RuntimeKind::Embedded,
        )
        .with_context(|| format!("opening the containers of node {}", n.name))?;
        for (id, _, _) in rt.list()? {
            rt.remove(&id)
                .with_context(|| format!("removing container {id} of node {}", n.name))?;
        }
    }
    let run_dir = Path::new("/run/skiff").join(&n.name);
    unmount_under(&[node_dir.as_path(), run_dir.as_path()])?;
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("removing {}", run_dir.display()))?;
    }
    Ok(())
}

/// Unmounts every mount point under `roots`, deepest first.
fn unmount_under(roots: &[&Path]) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            .or_else(|e| {
                if e == nix::errno::Errno::EINVAL {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("unmounting {}", p.display()))?;
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(cluster_name("e2e-1").is_ok());
        for bad in ["", "1abc", "a_b", "Abc", "a-", "a/b", &"a".repeat(21)] {
            assert!(cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_names_fit() {
        let tag = link_tag("a-very-long-cluster", Path::new("/tmp/x"));
        assert!(format!("skc{tag}v100").len() <= 15);
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/a\\\\"), "/a\\\\");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn subnets() {
        assert_eq!(
            parse_subnet("10.9.8.0/24").unwrap(),
            (Ipv4Addr::new(10, 9, 8, 0), 24)
        );
        assert!(parse_subnet("10.9.8.0/30").is_err());
        assert!(parse_subnet("nonsense").is_err());
        let (n, l) = default_subnet("skiff");
        assert_eq!((n.octets()[0], n.octets()[1], l), (172, 31, 24));
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(start_time(i32::MAX).is_none());
    }
}
