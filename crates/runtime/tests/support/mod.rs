//! Shared by the container tests and the benchmark: a busybox rootfs layer, a runtime rooted
//! in a temporary directory whose shim is this very test binary (`<exe> shim …`), specs with
//! unique ids and cgroups, cleanup that also runs on failure, and a tiny parallel runner
//! (the test binaries have no libtest harness, because `main` must dispatch `shim` first).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use runtime::container::{ContainerSpec, ContainerState, Runtime, RuntimeKind, ShimCommand, logs};

/// If this process was started as a shim, runs it and returns its exit code.
pub fn dispatch_shim() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "shim") {
        return Some(runtime::container::shim_main(args[2..].to_vec()));
    }
    None
}

/// A busybox root filesystem built once per test process (a copy of /bin/busybox with every
/// applet linked into /bin, and minimal /etc/passwd and /etc/group), removed at exit.
pub fn busybox_layer() -> &'static Path {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    LAYER.get_or_init(|| {
        let dir = PathBuf::from(format!(
            "/var/tmp/skiff-test-busybox-{}",
            std::process::id()
        ));
        build_busybox(&dir).expect("building the busybox layer");
        dir
    })
}

fn build_busybox(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "data", "scratch",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying /bin/busybox")?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()?;
    for applet in String::from_utf8(list.stdout)?.lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    Ok(())
}

pub fn remove_busybox_layer() {
    let _ = std::fs::remove_dir_all(format!(
        "/var/tmp/skiff-test-busybox-{}",
        std::process::id()
    ));
}

/// The cgroup parent all of this process's containers live under.
pub fn cgroup_top() -> String {
    format!("/skiff-test-{}", std::process::id())
}

/// A runtime in its own temporary root; removes every container it has on drop.
pub struct Fixture {
    pub name: String,
    pub rt: Runtime,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(name: &str) -> Result<Fixture> {
        Self::with_kind(name, RuntimeKind::Embedded)
    }

    pub fn with_kind(name: &str, kind: RuntimeKind) -> Result<Fixture> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("skiff-ct-{name}-"))
            .tempdir_in("/var/tmp")?;
        let rt = Runtime::new(dir.path().join("containers"), shim_command()?, kind)?;
        Ok(Fixture {
            name: name.to_string(),
            rt,
            dir,
        })
    }

    /// A unique container id for this test.
    pub fn id(&self, suffix: &str) -> String {
        format!("{}-{}-{}", self.name, suffix, std::process::id())
    }

    pub fn spec(&self, suffix: &str, args: &[&str]) -> ContainerSpec {
        let id = self.id(suffix);
        ContainerSpec {
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
            id,
            layers: vec![busybox_layer().to_path_buf()],
            args: args.iter().map(|a| a.to_string()).collect(),
            hostname: format!("{}-{suffix}", self.name),
            cgroup_parent: format!("{}/{}", cgroup_top(), self.name),
            labels: BTreeMap::from([("test".to_string(), self.name.clone())]),
            ..Default::default()
        }
    }

    /// The log as `kubectl logs` shows it.
    pub async fn logs(&self, spec: &ContainerSpec) -> Result<String> {
        read_log(&spec.log_path).await
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let rt = self.rt.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || rt.remove(&id)).await??;
        Ok(())
    }

    /// Starts and waits for the exit; returns the final state and the log.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<(ContainerState, String)> {
        self.rt.start(spec).await?;
        let state = tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&spec.id))
            .await
            .context("waiting for the container")??;
        let log = self.logs(spec).await?;
        Ok((state, log))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for (id, ..) in list {
                if let Err(e) = self.rt.remove(&id) {
                    eprintln!("cleanup of {id}: {e}");
                }
            }
        }
    }
}

pub fn shim_command() -> Result<ShimCommand> {
    Ok(ShimCommand {
        program: std::env::current_exe()?,
        args: vec!["shim".into()],
    })
}

pub async fn read_log(path: &Path) -> Result<String> {
    use futures::StreamExt;
    let mut s = Box::pin(logs::read_logs(
        path.to_path_buf(),
        logs::LogOptions::default(),
        async {},
    ));
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(String::from_utf8(out)?)
}

pub fn exit_code(state: &ContainerState) -> Result<i32> {
    match state {
        ContainerState::Exited { code, .. } => Ok(*code),
        other => bail!("expected an exited container, got {other:?}"),
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub type TestFn = fn() -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Runs the tests whose names contain one of the non-flag arguments (all if none), in
/// parallel, each with a deadline; prints libtest-like lines; removes the cgroup top and the
/// busybox layer at the end.
pub fn run_tests(tests: &[(&'static str, TestFn)]) -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&(&str, TestFn)> = tests
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("these tests create real containers and must run as root");
        return ExitCode::FAILURE;
    }
    println!("\nrunning {} tests", selected.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    busybox_layer();
    let results: Vec<(&str, Result<()>, Duration)> = rt.block_on(async {
        let mut handles = Vec::new();
        for (name, f) in &selected {
            let fut = f();
            let name = *name;
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = match tokio::time::timeout(Duration::from_secs(120), fut).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("timed out after 120 s")),
                };
                (name, r, t0.elapsed())
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            match h.await {
                Ok(r) => out.push(r),
                Err(e) => out.push(("<panicked>", Err(anyhow::anyhow!("{e}")), Duration::ZERO)),
            }
        }
        out
    });
    let mut failed = 0;
    for (name, r, took) in &results {
        match r {
            Ok(()) => println!("test {name} ... ok ({} ms)", took.as_millis()),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {e:#}");
            }
        }
    }
    cleanup_cgroup_top();
    remove_busybox_layer();
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        results.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every directory of cgroup `path` in any hierarchy that still exists.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join(path.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect()
}

/// Removes what is left of this process's cgroup top (only empty directories can go).
fn cleanup_cgroup_top() {
    for dir in cgroup_dirs(&cgroup_top()) {
        let mut subdirs: Vec<PathBuf> = walk_dirs(&dir);
        subdirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in subdirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}
