//! Shared helpers for the pod network tests: a "node" network namespace per test, made in a
//! temporary directory and torn down on drop (also when the test fails), so nothing a test does
//! reaches the host's own namespace.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use network::BridgeConfig;
use nix::mount::{MntFlags, umount2};

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub netns: PathBuf,
}

impl TestNode {
    /// A fresh node namespace (only `lo`) under a temporary directory named after this process
    /// and `tag`.
    pub fn new(tag: &str) -> TestNode {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "skiff-net-{}-{}-{tag}-",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir()
            .expect("temporary directory");
        let netns = dir.path().join("node.netns");
        let node = TestNode { dir, netns };
        network::netns::create(&node.netns).expect("creating the node namespace");
        node
    }

    pub fn config(&self, subnet: &str) -> BridgeConfig {
        config_in(self.dir.path(), subnet)
    }

    /// `ip ARGS` in the node's namespace; panics with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        exec_in(&self.netns, "ip", args)
    }

    /// The names of the node's links, sorted.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect();
        names.sort();
        names
    }

    /// Mount points under the test's directory, as /proc/self/mountinfo lists them.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.dir.path())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Deepest first; the node namespace goes with its mount, and its bridge and veths with
        // it (a veth's pod end goes with the pair).
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mount in mounts {
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
    }
}

/// The pod network layout the tests use, under `dir` (also used by a re-executed child).
pub fn config_in(dir: &Path, subnet: &str) -> BridgeConfig {
    BridgeConfig {
        node_netns: Some(dir.join("node.netns")),
        ..BridgeConfig::new(
            subnet.parse().expect("subnet"),
            dir.join("state"),
            dir.join("netns"),
        )
    }
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(dir))
        .collect()
}

/// Runs `program ARGS` inside the namespace at `netns` (util-linux `nsenter`), returning stdout.
pub fn exec_in(netns: &Path, program: &str, args: &[&str]) -> String {
    let out = try_exec_in(netns, program, args);
    match out {
        Ok(stdout) => stdout,
        Err(e) => panic!("{e}"),
    }
}

pub fn try_exec_in(netns: &Path, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("running nsenter {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} in {} failed ({}): {}{}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One ICMP echo from inside `netns` to `ip`.
pub fn ping(netns: &Path, ip: std::net::Ipv4Addr) -> Result<(), String> {
    try_exec_in(
        netns,
        "busybox",
        &["ping", "-c", "1", "-W", "2", &ip.to_string()],
    )
    .map(drop)
}
