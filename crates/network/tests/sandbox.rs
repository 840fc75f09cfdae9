//! Pod sandboxes on real namespaces, links and mounts, all inside a node namespace each test
//! makes for itself (runs as root).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use network::{PodNetwork, Sandbox, connect_in, run_in};
use support::{TestNode, exec_in, ping};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a line-echo server on `ip:port` inside `netns`, serving `conns` connections.
fn echo_server(
    netns: &Path,
    ip: Ipv4Addr,
    port: u16,
    conns: usize,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let listener = run_in(netns, move || std::net::TcpListener::bind((ip, port)))??;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        for _ in 0..conns {
            let (stream, _) = tokio::time::timeout(TIMEOUT, listener.accept()).await??;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await?;
            write.write_all(format!("echo {line}").as_bytes()).await?;
        }
        Ok(())
    }))
}

async fn echo_from(netns: &Path, to: SocketAddr, message: &str) -> Result<String> {
    let stream = connect_in(netns, to, TIMEOUT).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{message}\n").as_bytes()).await?;
    let mut reply = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(read).read_line(&mut reply)).await??;
    Ok(reply.trim_end().to_owned())
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn expected_links(bridge: &str, sandboxes: &[&Sandbox]) -> Vec<String> {
    let mut links = vec!["lo".to_owned(), bridge.to_owned()];
    links.extend(sandboxes.iter().map(|s| s.host_veth.clone()));
    sorted(links)
}

/// Nothing of the pod network is left in the node: only `lo` in it, no pod namespace file and
/// no mount under the test's directory but the node's own namespace.
fn assert_clean(node: &TestNode) {
    assert_eq!(node.links(), ["lo"], "links left in the node");
    let netns_dir = node.dir.path().join("netns");
    assert!(
        !netns_dir.exists(),
        "namespace directory left: {:?}",
        std::fs::read_dir(&netns_dir).map(|d| d.count())
    );
    assert_eq!(
        node.mounts(),
        std::slice::from_ref(&node.netns),
        "mounts left"
    );
}

#[tokio::test]
async fn pods_reach_each_other_and_the_node_reaches_them() -> Result<()> {
    let node = TestNode::new("reach");
    let forwarding = || exec_in(&node.netns, "cat", &["/proc/sys/net/ipv4/ip_forward"]);
    let forwarding_before = forwarding();
    let net = PodNetwork::new(node.config("10.42.0.0/24")).await?;
    let a = net.setup("pod-a").await?;
    let b = net.setup("pod-b").await?;

    let subnet: network::Ipv4Cidr = "10.42.0.0/24".parse()?;
    for s in [&a, &b] {
        ensure!(
            subnet.contains(s.ip) && s.ip != Ipv4Addr::new(10, 42, 0, 1),
            "{s:?}"
        );
        assert_eq!((s.gateway, s.prefix_len), (Ipv4Addr::new(10, 42, 0, 1), 24));
    }
    assert_ne!(a.ip, b.ip);

    // TCP: pod b and the node talk to a server in pod a, by pod IP.
    let server = echo_server(&a.netns, a.ip, 8080, 2)?;
    assert_eq!(
        echo_from(&b.netns, (a.ip, 8080).into(), "from b").await?,
        "echo from b"
    );
    assert_eq!(
        echo_from(&node.netns, (a.ip, 8080).into(), "from node").await?,
        "echo from node"
    );
    server.await??;
    // ICMP, both ways and to the gateway.
    ping(&b.netns, a.ip).map_err(anyhow::Error::msg)?;
    ping(&a.netns, b.ip).map_err(anyhow::Error::msg)?;
    ping(&a.netns, a.gateway).map_err(anyhow::Error::msg)?;
    ping(&node.netns, b.ip).map_err(anyhow::Error::msg)?;

    // What the pod sees: lo up, eth0 with the address and MTU, the default route.
    let lo = exec_in(&a.netns, "ip", &["-o", "link", "show", "lo"]);
    ensure!(lo.contains(",UP"), "lo is not up: {lo}");
    let eth0 = exec_in(&a.netns, "ip", &["-o", "link", "show", "eth0"]);
    ensure!(eth0.contains("mtu 1500") && eth0.contains(",UP"), "{eth0}");
    let addr = exec_in(&a.netns, "ip", &["-o", "-4", "addr", "show", "dev", "eth0"]);
    ensure!(addr.contains(&format!("inet {}/24", a.ip)), "{addr}");
    let route = exec_in(&a.netns, "ip", &["route", "show", "default"]);
    assert_eq!(route.trim(), "default via 10.42.0.1 dev eth0 proto static");
    // The node side: the bridge has the gateway address, the veth is its port.
    let br = exec_in(
        &node.netns,
        "ip",
        &["-o", "-4", "addr", "show", "dev", "skiff0"],
    );
    ensure!(br.contains("inet 10.42.0.1/24"), "{br}");
    let port = node.ip(&["-o", "link", "show", &a.host_veth]);
    ensure!(
        port.contains("master skiff0") && port.contains("mtu 1500"),
        "{port}"
    );
    // Hairpin: a pod may reach itself through a Service.
    let port = node.ip(&["-d", "-o", "link", "show", &a.host_veth]);
    ensure!(port.contains("hairpin on"), "{port}");
    // No forwarding switched on, no route towards anything but the subnet.
    assert_eq!(forwarding(), forwarding_before);
    assert_eq!(
        node.ip(&["-4", "route", "show"]).trim(),
        "10.42.0.0/24 dev skiff0 proto kernel scope link src 10.42.0.1"
    );

    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

#[tokio::test]
async fn setup_is_idempotent_and_teardown_leaves_nothing() -> Result<()> {
    let node = TestNode::new("idem");
    let net = PodNetwork::new(node.config("10.42.7.0/24")).await?;
    let first = net.setup("pod-x").await?;
    let again = net.setup("pod-x").await?;
    assert_eq!(first, again);
    assert_eq!(node.links(), expected_links("skiff0", &[&first]));
    let netns_mounts = node
        .mounts()
        .into_iter()
        .filter(|m| *m == first.netns)
        .count();
    assert_eq!(netns_mounts, 1, "the namespace file is mounted once");

    // A sandbox that lost its veth is repaired by the next setup, with the same address.
    node.ip(&["link", "del", &first.host_veth]);
    ensure!(
        ping(&node.netns, first.ip).is_err(),
        "pod reachable without its veth"
    );
    assert_eq!(net.setup("pod-x").await?, first);
    ping(&node.netns, first.ip).map_err(anyhow::Error::msg)?;

    net.teardown("pod-x").await?;
    net.teardown("pod-x").await?;
    net.teardown("never-set-up").await?;
    assert_eq!(node.links(), ["lo", "skiff0"]);
    ensure!(!first.netns.exists(), "namespace file left");
    ensure!(
        !node.mounts().contains(&first.netns),
        "namespace mount left"
    );
    ensure!(net.sandboxes()?.is_empty());
    let records = std::fs::read_dir(node.dir.path().join("state/sandboxes"))?.count();
    assert_eq!(records, 0);

    // The address is free again (round-robin comes back to it once the rest is taken).
    let next = net.setup("pod-y").await?;
    assert_ne!(next.ip, first.ip, "a freed address is not reused at once");
    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

#[tokio::test]
async fn ipam_never_hands_out_an_address_twice_and_exhaustion_is_clear() -> Result<()> {
    let node = TestNode::new("ipam");
    let net = PodNetwork::new(node.config("10.42.1.0/24")).await?;
    let ids: Vec<String> = (0..253).map(|i| format!("pod-{i}")).collect();
    let results: Vec<_> = futures::stream::iter(ids.iter().map(|id| net.setup(id)))
        .buffer_unordered(8)
        .collect()
        .await;
    let sandboxes: Vec<Sandbox> = results.into_iter().collect::<Result<_, _>>()?;
    let ips: BTreeSet<Ipv4Addr> = sandboxes.iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), 253, "every sandbox has its own address");
    let octets: BTreeSet<u8> = ips.iter().map(|ip| ip.octets()[3]).collect();
    assert_eq!(
        octets,
        (2..=254).collect(),
        "all of .2 to .254, never .0, .1 or .255"
    );
    let veths: BTreeSet<&str> = sandboxes.iter().map(|s| s.host_veth.as_str()).collect();
    assert_eq!(veths.len(), 253);
    assert_eq!(
        node.links().len(),
        255,
        "lo, the bridge and one veth per pod"
    );

    let err = net
        .setup("one-too-many")
        .await
        .expect_err("the subnet is full");
    assert_eq!(
        err.to_string(),
        "setting up sandbox one-too-many: no free pod address in 10.42.1.0/24: all 253 are allocated"
    );
    ensure!(!node.dir.path().join("netns/one-too-many").exists());
    net.teardown("pod-17").await?;
    let replacement = net.setup("one-too-many").await?;
    assert_eq!(
        replacement.ip,
        sandboxes
            .iter()
            .find(|s| s.id == "pod-17")
            .map(|s| s.ip)
            .context("pod-17")?
    );

    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_setups_and_teardowns_from_many_tasks() -> Result<()> {
    let node = TestNode::new("conc");
    let net = std::sync::Arc::new(PodNetwork::new(node.config("10.42.2.0/24")).await?);
    // 40 pods, and each of the first 5 set up by 4 tasks at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let copies = if i < 5 { 4 } else { 1 };
        for _ in 0..copies {
            let net = net.clone();
            tasks.spawn(async move { net.setup(&format!("pod-{i}")).await });
        }
    }
    let mut by_id = std::collections::BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let sandbox = result??;
        if let Some(seen) = by_id.insert(sandbox.id.clone(), sandbox.clone()) {
            assert_eq!(seen, sandbox, "concurrent setups of one id agree");
        }
    }
    assert_eq!(by_id.len(), 40);
    let ips: BTreeSet<_> = by_id.values().map(|s| s.ip).collect();
    assert_eq!(ips.len(), 40, "no address handed out twice");
    assert_eq!(
        net.sandboxes()?,
        by_id.values().cloned().collect::<Vec<_>>()
    );
    let all: Vec<&Sandbox> = by_id.values().collect();
    assert_eq!(node.links(), expected_links("skiff0", &all));
    for s in all.iter().step_by(7) {
        ping(&node.netns, s.ip).map_err(anyhow::Error::msg)?;
    }

    for i in 0..40 {
        let net = net.clone();
        tasks.spawn(async move {
            net.teardown(&format!("pod-{i}")).await?;
            net.setup(&format!("pod-{i}")).await // not a sandbox any more: set up anew
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    assert_eq!(net.sandboxes()?.len(), 40);
    let ips: BTreeSet<_> = net.sandboxes()?.iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), 40);

    let net = std::sync::Arc::into_inner(net).context("all tasks are done")?;
    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

#[tokio::test]
async fn restart_completes_half_built_sandboxes_and_frees_the_rest() -> Result<()> {
    let node = TestNode::new("restart");
    // A /29: 5 pod addresses, all used, so freed ones can be seen being handed out again.
    let cfg = node.config("10.42.3.0/29");
    let net = PodNetwork::new(cfg.clone()).await?;
    let keep = net.setup("keep").await?;
    let gone = net.setup("gone").await?;
    let unrecorded = net.setup("unrecorded").await?;
    let half = net.setup("half").await?;
    let torn = net.setup("torn").await?;
    drop(net); // the agent dies: nothing is torn down

    // A record whose namespace is gone (as after a reboot).
    network::netns::remove(&gone.netns)?;
    // A namespace and veth whose record is gone.
    std::fs::remove_file(node.dir.path().join("state/sandboxes/unrecorded.json"))?;
    // A sandbox half built: namespace and record, but no veth (a crash between the two).
    node.ip(&["link", "del", &half.host_veth]);
    // A record that cannot be read back (edited by hand, or torn by a power loss).
    std::fs::write(
        node.dir.path().join("state/sandboxes/torn.json"),
        b"{\"id\": \"to",
    )?;

    let net = PodNetwork::new(cfg.clone()).await?;
    let ids: Vec<String> = net.sandboxes()?.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["half", "keep"]);
    assert_eq!(net.sandboxes()?, [half.clone(), keep.clone()]);
    assert_eq!(node.links(), expected_links("skiff0", &[&half, &keep]));
    let mounts = node.mounts();
    for stale in [&gone, &unrecorded, &torn] {
        ensure!(!stale.netns.exists(), "namespace file of {} left", stale.id);
        ensure!(
            !mounts.contains(&stale.netns),
            "namespace of {} still mounted",
            stale.id
        );
    }
    let records = std::fs::read_dir(node.dir.path().join("state/sandboxes"))?.count();
    assert_eq!(records, 2, "only the kept records remain");
    ping(&node.netns, half.ip).map_err(anyhow::Error::msg)?;
    ping(&half.netns, keep.ip).map_err(anyhow::Error::msg)?;

    // The freed addresses are allocatable: 5 - 2 kept = 3 more fit, a 4th does not.
    for id in ["new-1", "new-2", "new-3"] {
        let s = net.setup(id).await?;
        ensure!(s.ip != half.ip && s.ip != keep.ip);
    }
    ensure!(net.setup("new-4").await.is_err());

    // A second agent on the same state is refused while this one runs.
    let err = PodNetwork::new(cfg)
        .await
        .err()
        .context("a second instance must be refused")?;
    ensure!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );

    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

/// Kills (SIGKILL, by PID) and reaps the child if the test ends before it did.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const CRASH_CHILD: &str = "SKIFF_NETWORK_CRASH_CHILD";

/// Child mode of the crash test: sets up sandboxes, 4 at a time, until it is killed.
async fn crash_child(dir: &str) -> Result<()> {
    let net = PodNetwork::new(support::config_in(Path::new(dir), "10.42.4.0/24")).await?;
    let ids: Vec<String> = (0..250).map(|i| format!("crash-{i}")).collect();
    let mut setups = futures::stream::iter(ids.iter().map(|id| net.setup(id))).buffer_unordered(4);
    while let Some(result) = setups.next().await {
        result?;
    }
    bail!("set up every sandbox before being killed")
}

#[tokio::test]
async fn a_kill_during_setups_is_reconciled_on_restart() -> Result<()> {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        return crash_child(&dir).await;
    }
    let node = TestNode::new("crash");
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "a_kill_during_setups_is_reconciled_on_restart",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD, node.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let records = node.dir.path().join("state/sandboxes");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0);
        if count >= 12 {
            break;
        }
        if let Some(status) = child.0.try_wait()? {
            bail!("the child exited before being killed: {status}");
        }
        ensure!(
            Instant::now() < deadline,
            "the child made only {count} records in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.0.kill()?; // SIGKILL, mid-setup: 4 setups are in flight
    child.0.wait()?;

    let net = PodNetwork::new(node.config("10.42.4.0/24")).await?;
    let sandboxes = net.sandboxes()?;
    ensure!(
        sandboxes.len() >= 8,
        "only {} sandboxes survived",
        sandboxes.len()
    );
    let ips: BTreeSet<_> = sandboxes.iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), sandboxes.len(), "no address twice");
    // Every recorded sandbox is complete, and nothing else exists.
    let all: Vec<&Sandbox> = sandboxes.iter().collect();
    assert_eq!(node.links(), expected_links("skiff0", &all));
    let files: BTreeSet<_> = std::fs::read_dir(node.dir.path().join("netns"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    assert_eq!(files, sandboxes.iter().map(|s| s.netns.clone()).collect());
    for s in &sandboxes {
        let addr = exec_in(&s.netns, "ip", &["-o", "-4", "addr", "show", "dev", "eth0"]);
        ensure!(
            addr.contains(&format!("inet {}/24", s.ip)),
            "{}: {addr}",
            s.id
        );
    }
    ping(&node.netns, sandboxes[0].ip).map_err(anyhow::Error::msg)?;
    ping(&sandboxes[0].netns, sandboxes[sandboxes.len() - 1].ip).map_err(anyhow::Error::msg)?;

    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_clear_errors() -> Result<()> {
    let node = TestNode::new("bad");
    // A link of another kind under the bridge's name is not taken over.
    node.ip(&[
        "link",
        "add",
        "skiff0",
        "type",
        "veth",
        "peer",
        "name",
        "skiff0-peer",
    ]);
    let err = PodNetwork::new(node.config("10.42.5.0/24"))
        .await
        .err()
        .context("veth as bridge")?;
    assert_eq!(
        err.to_string(),
        "link skiff0 in the node's network namespace is not a bridge; leaving it alone"
    );
    node.ip(&["link", "del", "skiff0"]);

    let mut cfg = node.config("10.42.5.0/24");
    cfg.bridge = "a-bridge-name-too-long".into();
    let err = PodNetwork::new(cfg)
        .await
        .err()
        .context("long bridge name")?;
    ensure!(
        err.to_string()
            .contains("an interface name has 1 to 15 characters"),
        "{err}"
    );
    let err = PodNetwork::new(node.config("10.42.5.0/31"))
        .await
        .err()
        .context("/31")?;
    ensure!(err.to_string().contains("between /16 and /30"), "{err}");

    let net = PodNetwork::new(node.config("10.42.5.0/24")).await?;
    for id in ["", "../escape", "a/b", ".hidden"] {
        let err = net.setup(id).await.expect_err(id);
        ensure!(
            err.to_string().starts_with("invalid sandbox id"),
            "{id:?}: {err}"
        );
        ensure!(net.teardown(id).await.is_err(), "{id:?}");
    }
    let pod = net.setup("pod").await?;

    // Nothing listens: refused at once. An address nobody has: no answer within the timeout.
    let err = connect_in(&pod.netns, (pod.gateway, 9).into(), TIMEOUT)
        .await
        .expect_err("refused");
    match &err {
        network::netns::Error::Connect { source, .. } => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{err}"
            )
        }
        other => bail!("unexpected error: {other}"),
    }
    let silent = Ipv4Addr::new(10, 42, 5, 200);
    let started = Instant::now();
    let err = connect_in(&pod.netns, (silent, 80).into(), Duration::from_millis(300))
        .await
        .expect_err("timeout");
    ensure!(
        matches!(err, network::netns::Error::ConnectTimeout { .. }),
        "{err}"
    );
    ensure!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.to_string(),
        format!(
            "connecting to 10.42.5.200:80 from network namespace {}: no answer within 300ms",
            pod.netns.display()
        )
    );

    // Paths that are not namespaces.
    let plain = node.dir.path().join("plain-file");
    std::fs::write(&plain, b"")?;
    let err = run_in(&plain, || ()).expect_err("plain file");
    assert_eq!(
        err.to_string(),
        format!("{} is not a network namespace", plain.display())
    );
    let missing = node.dir.path().join("missing");
    let err = run_in(&missing, || ()).expect_err("missing file");
    ensure!(
        err.to_string()
            .starts_with(&format!("opening network namespace {}", missing.display())),
        "{err}"
    );
    // A panic inside the namespace is an error, not a crash of the caller.
    let err = run_in(&pod.netns, || -> u8 { panic!("boom") }).expect_err("panic");
    ensure!(err.to_string().contains("panicked"), "{err}");

    net.destroy().await?;
    assert_clean(&node);
    Ok(())
}
