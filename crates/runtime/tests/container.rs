//! Real containers through `runtime::container::Runtime`: busybox rootfs, the test binary
//! itself as the shim. Run as root: `cargo test -p runtime --test container [filter]`.

mod support;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use runtime::container::logs::LogOptions;
use runtime::container::{
    ContainerState, Error, ExecSpec, MountKind, MountSpec, Output, Resources, RuntimeKind, Signal,
    User,
};
use support::{Fixture, TestFn, exit_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> ExitCode {
    if let Some(code) = support::dispatch_shim() {
        return code;
    }
    if std::env::args().nth(1).as_deref() == Some("agent-child") {
        return agent_child();
    }
    let tests: &[(&str, TestFn)] = &[
        ("echo_logs_and_exit_code", || {
            Box::pin(echo_logs_and_exit_code())
        }),
        ("missing_executable_is_a_start_error", || {
            Box::pin(missing_executable_is_a_start_error())
        }),
        (
            "memory_limit_oom_kill",
            || Box::pin(memory_limit_oom_kill()),
        ),
        ("kill_and_stop", || Box::pin(kill_and_stop())),
        ("exec_commands", || Box::pin(exec_commands())),
        ("exec_tty", || Box::pin(exec_tty())),
        ("attach_stdin_once", || Box::pin(attach_stdin_once())),
        ("attach_tty", || Box::pin(attach_tty())),
        ("shim_survives_agent_kill", || {
            Box::pin(shim_survives_agent_kill())
        }),
        ("security_defaults", || Box::pin(security_defaults())),
        ("privileged_and_user", || Box::pin(privileged_and_user())),
        (
            "remove_leaves_nothing",
            || Box::pin(remove_leaves_nothing()),
        ),
        ("stats_from_cgroup", || Box::pin(stats_from_cgroup())),
        ("readonly_rootfs_and_mounts", || {
            Box::pin(readonly_rootfs_and_mounts())
        }),
        ("logs_follow_until_exit", || {
            Box::pin(logs_follow_until_exit())
        }),
        ("network_namespaces", || Box::pin(network_namespaces())),
        ("runc_runs_the_same_bundle", || {
            Box::pin(runc_runs_the_same_bundle())
        }),
    ];
    support::run_tests(tests)
}

async fn echo_logs_and_exit_code() -> Result<()> {
    let f = Fixture::new("echo")?;
    let spec = f.spec("c", &["sh", "-c", "echo hello; echo oops >&2; exit 7"]);
    let (state, log) = f.run(&spec).await?;
    let ContainerState::Exited {
        code,
        signal,
        oom_killed,
        started_at,
        finished_at,
        message,
    } = state
    else {
        bail!("not exited: {state:?}");
    };
    ensure!(
        code == 7 && signal.is_none() && !oom_killed,
        "{code} {signal:?} {oom_killed}"
    );
    ensure!(started_at.is_some_and(|s| s <= finished_at) && message.is_empty());
    ensure!(
        log.contains("hello\n") && log.contains("oops\n"),
        "log: {log:?}"
    );
    let raw = std::fs::read_to_string(&spec.log_path)?;
    ensure!(
        raw.lines().any(|l| l.ends_with(" stdout F hello"))
            && raw.lines().any(|l| l.ends_with(" stderr F oops")),
        "CRI log: {raw:?}"
    );
    let list = f.rt.list()?;
    ensure!(list.len() == 1 && list[0].2.get("test").map(String::as_str) == Some("echo"));
    f.remove(&spec.id).await?;
    ensure!(matches!(f.rt.state(&spec.id), Err(Error::NotFound(_))));
    Ok(())
}

async fn missing_executable_is_a_start_error() -> Result<()> {
    let f = Fixture::new("noexec")?;
    let spec = f.spec("c", &["no-such-binary", "x"]);
    match f.rt.start(&spec).await {
        Err(Error::Start { message, .. }) => ensure!(
            message == "exec: \"no-such-binary\": executable file not found in $PATH",
            "message: {message:?}"
        ),
        other => bail!("expected a start error, got {other:?}"),
    }
    let state = f.rt.state(&spec.id)?;
    ensure!(exit_code(&state)? == 128, "{state:?}");
    f.remove(&spec.id).await?;
    Ok(())
}

async fn memory_limit_oom_kill() -> Result<()> {
    let f = Fixture::new("oom")?;
    let mut spec = f.spec("c", &["tail", "/dev/zero"]);
    spec.resources = Resources {
        memory_limit: Some(32 << 20),
        ..Default::default()
    };
    let (state, _) = f.run(&spec).await?;
    match state {
        ContainerState::Exited {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            ..
        } => {}
        other => bail!("expected an OOM kill, got {other:?}"),
    }
    Ok(())
}

async fn kill_and_stop() -> Result<()> {
    let f = Fixture::new("kill")?;
    // A shell init that handles SIGTERM.
    let trap = f.spec(
        "trap",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    );
    f.rt.start(&trap).await?;
    // Signal only once the handler is installed: without one, pid 1 ignores SIGTERM.
    wait_for_log(&f, &trap, "ready").await?;
    f.rt.kill(&trap.id, Signal::SIGTERM)?;
    let state = f.rt.wait(&trap.id).await?;
    ensure!(exit_code(&state)? == 3, "{state:?}");
    ensure!(f.logs(&trap).await?.contains("bye"));

    // `sleep` as pid 1 has no SIGTERM handler: the kernel drops the signal (upstream too),
    // so stop() falls back to SIGKILL after the grace period.
    let sleeper = f.spec("sleep", &["sleep", "1000"]);
    let info = f.rt.start(&sleeper).await?;
    f.rt.kill(&sleeper.id, Signal::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        f.rt.state(&sleeper.id)?
            == ContainerState::Running {
                pid: info.pid,
                started_at: info.started_at
            },
        "SIGTERM should not stop sleep as pid 1"
    );
    let state = f.rt.stop(&sleeper.id, Duration::from_millis(300)).await?;
    match state {
        ContainerState::Exited {
            code: 137,
            signal: Some(9),
            oom_killed: false,
            ..
        } => {}
        other => bail!("expected SIGKILL, got {other:?}"),
    }
    ensure!(matches!(
        f.rt.kill(&sleeper.id, Signal::SIGKILL),
        Err(Error::NotRunning(_))
    ));
    Ok(())
}

async fn wait_for_log(
    f: &Fixture,
    spec: &runtime::container::ContainerSpec,
    text: &str,
) -> Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if f.logs(spec).await?.contains(text) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{text:?} never appeared in the log of {}", spec.id)
}

async fn collect(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Result<String> {
    let mut out = String::new();
    if let Some(mut r) = r {
        r.read_to_string(&mut out).await?;
    }
    Ok(out)
}

async fn exec_commands() -> Result<()> {
    let f = Fixture::new("exec")?;
    let spec = f.spec("c", &["sleep", "1000"]);
    f.rt.start(&spec).await?;

    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec!["id".into()],
                ..Default::default()
            },
        )
        .await?;
    let out = collect(p.stdout.take()).await?;
    ensure!(p.wait().await? == 0);
    ensure!(out.starts_with("uid=0(root) gid=0(root)"), "id: {out:?}");

    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $GREETING >&2; exit 5".into(),
                ],
                env: vec!["GREETING=hi".into()],
                ..Default::default()
            },
        )
        .await?;
    let err = collect(p.stderr.take()).await?;
    ensure!(p.wait().await? == 5);
    ensure!(err == "hi\n", "stderr: {err:?}");

    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec!["cat".into()],
                stdin: true,
                ..Default::default()
            },
        )
        .await?;
    let mut stdin = p.stdin.take().context("no stdin")?;
    stdin.write_all(b"ping\n").await?;
    drop(stdin);
    let out = collect(p.stdout.take()).await?;
    ensure!(p.wait().await? == 0);
    ensure!(out == "ping\n", "cat: {out:?}");

    // A probe that times out: the kubelet kills the exec'd process.
    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            },
        )
        .await?;
    p.kill(Signal::SIGKILL)?;
    ensure!(p.wait().await? == 137);

    match f
        .rt
        .exec(
            &spec.id,
            &ExecSpec {
                args: vec!["nope".into()],
                ..Default::default()
            },
        )
        .await
    {
        Err(Error::Exec { message, .. }) => ensure!(
            message.contains("executable file not found"),
            "message: {message:?}"
        ),
        Err(e) => bail!("unexpected error {e}"),
        Ok(_) => bail!("exec of a missing binary succeeded"),
    }
    // Exec'd processes get the container's seccomp profile and no_new_privs.
    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec![
                    "grep".into(),
                    "-E".into(),
                    "^(Seccomp|NoNewPrivs):".into(),
                    "/proc/self/status".into(),
                ],
                ..Default::default()
            },
        )
        .await?;
    let out = collect(p.stdout.take()).await?;
    ensure!(p.wait().await? == 0);
    ensure!(
        out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"),
        "{out:?}"
    );
    Ok(())
}

async fn exec_tty() -> Result<()> {
    let f = Fixture::new("exectty")?;
    let spec = f.spec("c", &["sleep", "1000"]);
    f.rt.start(&spec).await?;
    let mut p =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "read x; stty size; tty; exit 4".into(),
                ],
                tty: true,
                stdin: true,
                ..Default::default()
            },
        )
        .await?;
    p.resize(100, 40)?;
    let mut pty = p.pty.take().context("no pty")?;
    pty.write_all(b"go\n").await?;
    let mut out = Vec::new();
    pty.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out);
    ensure!(p.wait().await? == 4);
    ensure!(
        out.contains("40 100") && out.contains("/dev/pts/"),
        "tty output: {out:?}"
    );
    Ok(())
}

async fn attach_stdin_once() -> Result<()> {
    let f = Fixture::new("attach")?;
    let mut spec = f.spec(
        "c",
        &[
            "sh",
            "-c",
            "while read l; do echo got $l; echo err $l >&2; done; echo bye; exit 4",
        ],
    );
    spec.stdin = true;
    spec.stdin_once = true;
    f.rt.start(&spec).await?;
    let mut a = f.rt.attach(&spec.id).await?;
    ensure!(a.stdin && !a.tty);
    a.writer.write_stdin(b"one\n").await?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    while !(stdout.contains("got one") && stderr.contains("err one")) {
        match tokio::time::timeout(Duration::from_secs(10), a.recv()).await?? {
            Some((Output::Stdout, b)) => stdout.push_str(&String::from_utf8_lossy(&b)),
            Some((Output::Stderr, b)) => stderr.push_str(&String::from_utf8_lossy(&b)),
            None => bail!("attach ended early: {stdout:?} {stderr:?}"),
        }
    }
    a.writer.close_stdin().await?;
    while let Some((which, b)) = tokio::time::timeout(Duration::from_secs(10), a.recv()).await?? {
        if which == Output::Stdout {
            stdout.push_str(&String::from_utf8_lossy(&b));
        }
    }
    ensure!(stdout.ends_with("bye\n"), "stdout: {stdout:?}");
    ensure!(exit_code(&f.rt.wait(&spec.id).await?)? == 4);
    // Output before the attach is in the log too.
    let log = f.logs(&spec).await?;
    ensure!(
        log.contains("got one") && log.contains("bye"),
        "log: {log:?}"
    );
    Ok(())
}

async fn attach_tty() -> Result<()> {
    let f = Fixture::new("attachtty")?;
    let mut spec = f.spec("c", &["sh", "-c", "read x; stty size; echo done $x"]);
    spec.tty = true;
    spec.stdin = true;
    f.rt.start(&spec).await?;
    let mut a = f.rt.attach(&spec.id).await?;
    ensure!(a.tty);
    a.writer.resize(120, 30).await?;
    // Give the resize a head start over the input that triggers `stty`.
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.writer.write_stdin(b"hi\n").await?;
    let mut out = String::new();
    while let Some((_, b)) = tokio::time::timeout(Duration::from_secs(10), a.recv()).await?? {
        out.push_str(&String::from_utf8_lossy(&b));
    }
    ensure!(
        out.contains("30 120") && out.contains("done hi"),
        "tty: {out:?}"
    );
    ensure!(exit_code(&f.rt.wait(&spec.id).await?)? == 0);
    Ok(())
}

/// `<test exe> agent-child <root> <layer> <id> <log> <cgroup parent>`: plays an agent that
/// starts one container, prints its pid, and waits to be killed.
fn agent_child() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: Result<i32> = rt.block_on(async {
        let runtime = runtime::container::Runtime::new(
            args[2].clone().into(),
            support::shim_command()?,
            RuntimeKind::Embedded,
        )?;
        let spec = runtime::container::ContainerSpec {
            id: args[4].clone(),
            layers: vec![args[3].clone().into()],
            args: vec![
                "sh".into(),
                "-c".into(),
                "trap 'exit 9' TERM; echo ready; while true; do sleep 0.05; done".into(),
            ],
            log_path: args[5].clone().into(),
            cgroup_parent: args[6].clone(),
            ..Default::default()
        };
        Ok(runtime.start(&spec).await?.pid)
    });
    match result {
        Ok(pid) => {
            println!("{pid}");
            std::thread::sleep(Duration::from_secs(600));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shim_survives_agent_kill() -> Result<()> {
    let f = Fixture::new("adopt")?;
    let id = f.id("c");
    let log = f.dir.path().join("adopt.log");
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("agent-child")
        .arg(f.rt.root())
        .arg(support::busybox_layer())
        .arg(&id)
        .arg(&log)
        .arg(format!("{}/adopt", support::cgroup_top()))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    let mut out = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8; 1];
    while out.read(&mut byte).await? == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let pid: i32 = line
        .trim()
        .parse()
        .with_context(|| format!("agent child said {line:?}"))?;
    // kill -9 the "agent".
    child.start_kill()?;
    child.wait().await?;

    // A new runtime over the same directory re-adopts the container with the same pid.
    let rt = runtime::container::Runtime::new(
        f.rt.root().to_path_buf(),
        support::shim_command()?,
        RuntimeKind::Embedded,
    )?;
    let list = rt.list()?;
    ensure!(
        matches!(list.as_slice(), [(i, ContainerState::Running { pid: p, .. }, _)] if *i == id && *p == pid),
        "after the agent died: {list:?}"
    );
    let mut p = rt
        .exec(
            &id,
            &ExecSpec {
                args: vec!["true".into()],
                ..Default::default()
            },
        )
        .await?;
    ensure!(p.wait().await? == 0);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !support::read_log(&log).await?.contains("ready") {
        ensure!(
            std::time::Instant::now() < until,
            "the container never got ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.kill(&id, Signal::SIGTERM)?;
    let state = tokio::time::timeout(Duration::from_secs(10), rt.wait(&id)).await??;
    ensure!(exit_code(&state)? == 9, "{state:?}");
    Ok(())
}

async fn exec_output(f: &Fixture, id: &str, script: &str) -> Result<(i32, String)> {
    let mut p =
        f.rt.exec(
            id,
            &ExecSpec {
                args: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await?;
    let out = collect(p.stdout.take()).await?;
    let err = collect(p.stderr.take()).await?;
    Ok((p.wait().await?, format!("{out}{err}")))
}

async fn security_defaults() -> Result<()> {
    let f = Fixture::new("sec")?;
    let spec = f.spec("c", &["sleep", "1000"]);
    f.rt.start(&spec).await?;
    // containerd's default capabilities as a CapEff mask (docker's well-known 00000000a80425fb).
    let (_, status) = exec_output(&f, &spec.id, "cat /proc/1/status").await?;
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    ensure!(
        field("CapEff") == "00000000a80425fb",
        "CapEff {}",
        field("CapEff")
    );
    ensure!(
        field("CapBnd") == "00000000a80425fb",
        "CapBnd {}",
        field("CapBnd")
    );
    ensure!(
        field("CapInh") == "0000000000000000",
        "CapInh {}",
        field("CapInh")
    );
    ensure!(
        field("NoNewPrivs") == "1",
        "NoNewPrivs {}",
        field("NoNewPrivs")
    );
    ensure!(field("Seccomp") == "2", "Seccomp {}", field("Seccomp"));

    let checks: &[(&str, &str)] = &[
        // Device cgroup: creating a node is allowed (like runc), using it is not.
        (
            "mknod /tmp/sda b 8 0 && head -c 1 /tmp/sda",
            "Operation not permitted",
        ),
        ("head -c 1 /dev/null; echo null-ok", "null-ok"),
        ("head -c 4 /dev/urandom | wc -c", "4"),
        ("wc -c < /proc/timer_list", "0"),
        ("wc -c < /proc/keys", "0"),
        ("ls /sys/firmware | wc -l", "0"),
        (
            "echo 1 > /proc/sys/kernel/ns_last_pid",
            "Read-only file system",
        ),
        ("mount -t tmpfs t /tmp", "denied"),
        ("unshare -n true", "Operation not permitted"),
        ("touch /sys/x", "Read-only file system"),
        ("hostname", "sec-c"),
    ];
    for (script, want) in checks {
        let (_, out) = exec_output(&f, &spec.id, script).await?;
        ensure!(out.contains(want), "{script}: {out:?} lacks {want:?}");
    }
    // This kernel may lack /proc/kcore; where it has one, the container sees it empty.
    if std::path::Path::new("/proc/kcore").exists() {
        let (_, out) = exec_output(&f, &spec.id, "wc -c < /proc/kcore").await?;
        ensure!(out.trim() == "0", "/proc/kcore: {out:?}");
    }
    // Own pid namespace: the workload is pid 1.
    let (_, out) = exec_output(&f, &spec.id, "cat /proc/1/cmdline | tr '\\0' ' '").await?;
    ensure!(out.trim() == "sleep 1000", "pid 1 is {out:?}");
    Ok(())
}

async fn privileged_and_user() -> Result<()> {
    let f = Fixture::new("priv")?;
    let mut p = f.spec(
        "p",
        &[
            "sh",
            "-c",
            "grep -E '^(CapEff|Seccomp):' /proc/self/status; mount -t tmpfs t /tmp && echo mounted",
        ],
    );
    p.security.privileged = true;
    let (state, log) = f.run(&p).await?;
    ensure!(exit_code(&state)? == 0, "{state:?} {log}");
    ensure!(
        log.contains("Seccomp:\t0") && log.contains("mounted"),
        "{log:?}"
    );
    ensure!(!log.contains("CapEff:\t00000000a80425fb"), "{log:?}");

    // allowPrivilegeEscalation: true upstream means no no_new_privs; seccomp still applies.
    let mut esc = f.spec(
        "esc",
        &[
            "sh",
            "-c",
            "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; unshare -n true",
        ],
    );
    esc.security.no_new_privs = false;
    let (state, log) = f.run(&esc).await?;
    ensure!(exit_code(&state)? != 0, "unshare should fail: {log}");
    ensure!(
        log.contains("NoNewPrivs:\t0")
            && log.contains("Seccomp:\t2")
            && log.contains("Operation not permitted"),
        "{log:?}"
    );

    let mut u = f.spec("u", &["sh", "-c", "id; grep CapEff /proc/self/status"]);
    u.user = Some(User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![65534],
    });
    let (state, log) = f.run(&u).await?;
    ensure!(exit_code(&state)? == 0);
    ensure!(
        log.contains("uid=1000 gid=1000 groups=") && log.contains("65534"),
        "{log:?}"
    );
    ensure!(log.contains("CapEff:\t0000000000000000"), "{log:?}");
    Ok(())
}

async fn remove_leaves_nothing() -> Result<()> {
    let f = Fixture::new("remove")?;
    let spec = f.spec("c", &["sleep", "1000"]);
    let info = f.rt.start(&spec).await?;
    let dir = f.rt.root().join(&spec.id);
    let cgroup = format!("{}/{}", spec.cgroup_parent, spec.id);
    ensure!(
        !support::cgroup_dirs(&cgroup).is_empty(),
        "no cgroup while running"
    );
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&dir.to_string_lossy().to_string())
    };
    ensure!(mounted(), "rootfs not mounted while running");
    // A second process in the container, started by exec and left running.
    let _bg =
        f.rt.exec(
            &spec.id,
            &ExecSpec {
                args: vec!["sleep".into(), "999".into()],
                ..Default::default()
            },
        )
        .await?;
    f.remove(&spec.id).await?;
    ensure!(!mounted(), "a mount is left");
    ensure!(
        support::cgroup_dirs(&cgroup).is_empty(),
        "cgroup left: {:?}",
        support::cgroup_dirs(&cgroup)
    );
    ensure!(
        support::cgroup_dirs(&spec.cgroup_parent).is_empty(),
        "empty parent cgroup left: {:?}",
        support::cgroup_dirs(&spec.cgroup_parent)
    );
    ensure!(
        !std::path::Path::new(&format!("/proc/{}", info.pid)).exists(),
        "process left"
    );
    ensure!(!dir.exists(), "directory left");
    let leftovers: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|c| c.contains(&spec.id))
        .collect();
    ensure!(leftovers.is_empty(), "processes left: {leftovers:?}");
    f.remove(&spec.id).await?; // idempotent
    Ok(())
}

async fn stats_from_cgroup() -> Result<()> {
    let f = Fixture::new("stats")?;
    let spec = f.spec("c", &["sh", "-c", "while :; do :; done"]);
    f.rt.start(&spec).await?;
    let a = f.rt.stats(&spec.id)?;
    // The busy loop accumulates CPU time; how fast depends on the machine's load.
    let mut b = a;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while b.cpu_usage_ns < a.cpu_usage_ns + 50_000_000 {
        ensure!(
            std::time::Instant::now() < until,
            "cpu usage stuck: {a:?} -> {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        b = f.rt.stats(&spec.id)?;
    }
    ensure!(
        b.timestamp > a.timestamp && b.memory_working_set_bytes > 0,
        "{b:?}"
    );
    Ok(())
}

async fn readonly_rootfs_and_mounts() -> Result<()> {
    let f = Fixture::new("mounts")?;
    let host = f.dir.path().join("host-data");
    std::fs::create_dir(&host)?;
    std::fs::write(host.join("in"), "from host\n")?;
    let mut spec = f.spec(
        "c",
        &["sh", "-c", "cat /data/in; echo out > /data/out; echo t > /scratch/t && cat /scratch/t; touch /x || echo rootfs-ro; cat /etc/hostname"],
    );
    spec.readonly_rootfs = true;
    let hostname_file = f.dir.path().join("hostname");
    std::fs::write(&hostname_file, "from-kubelet\n")?;
    spec.mounts = vec![
        MountSpec {
            destination: "/data".into(),
            source: host.clone(),
            kind: MountKind::Bind { readonly: false },
        },
        MountSpec {
            destination: "/scratch".into(),
            source: Default::default(),
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
            },
        },
        MountSpec {
            destination: "/etc/hostname".into(),
            source: hostname_file,
            kind: MountKind::Bind { readonly: true },
        },
    ];
    let (state, log) = f.run(&spec).await?;
    ensure!(exit_code(&state)? == 0, "{state:?}: {log}");
    ensure!(log.contains("touch: /x: Read-only file system"), "{log:?}");
    ensure!(
        log.contains("from host") && log.contains("rootfs-ro") && log.contains("from-kubelet"),
        "{log:?}"
    );
    ensure!(std::fs::read_to_string(host.join("out"))? == "out\n");
    Ok(())
}

async fn logs_follow_until_exit() -> Result<()> {
    let f = Fixture::new("follow")?;
    let spec = f.spec(
        "c",
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do echo line $i; sleep 0.2; done",
        ],
    );
    f.rt.start(&spec).await?;
    let mut s = Box::pin(f.rt.logs(
        &spec.id,
        LogOptions {
            follow: true,
            timestamps: true,
            ..Default::default()
        },
    )?);
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), s.next()).await? {
        out.extend_from_slice(&chunk?);
    }
    let out = String::from_utf8(out)?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 3, "{out:?}");
    for (i, l) in lines.iter().enumerate() {
        let (ts, text) = l.split_once(' ').context("no timestamp")?;
        ensure!(
            runtime::container::logs::parse_rfc3339(ts).is_some(),
            "bad time {ts}"
        );
        ensure!(text == format!("line {}", i + 1), "{l}");
    }
    ensure!(!f.rt.state(&spec.id)?.is_running());
    Ok(())
}

async fn network_namespaces() -> Result<()> {
    let f = Fixture::new("netns")?;
    let own = f.spec("own", &["ls", "/sys/class/net"]);
    let (state, log) = f.run(&own).await?;
    ensure!(exit_code(&state)? == 0 && log == "lo\n", "{log:?}");

    // Join the namespace of a helper process (a pod sandbox stand-in).
    let mut holder = tokio::process::Command::new("unshare")
        .args(["-n", "sleep", "60"])
        .kill_on_drop(true)
        .spawn()?;
    let holder_pid = holder.id().context("no pid")?;
    let ns = std::path::PathBuf::from(format!("/proc/{holder_pid}/ns/net"));
    support::eventually(Duration::from_secs(5), || {
        std::fs::read_link(&ns).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    })
    .await;
    let want = std::fs::read_link(&ns)?;
    let mut joined = f.spec("join", &["readlink", "/proc/self/ns/net"]);
    joined.netns = Some(ns);
    let (state, log) = f.run(&joined).await?;
    holder.start_kill()?;
    let _ = holder.wait().await;
    ensure!(exit_code(&state)? == 0, "{state:?}");
    ensure!(log.trim() == want.to_string_lossy(), "{log:?} vs {want:?}");
    Ok(())
}

async fn runc_runs_the_same_bundle() -> Result<()> {
    let runc = std::path::PathBuf::from("/usr/sbin/runc");
    if !runc.exists() {
        bail!("/usr/sbin/runc is not installed");
    }
    let f = Fixture::with_kind("runc", RuntimeKind::Runc(runc))?;
    let spec = f.spec(
        "c",
        &[
            "sh",
            "-c",
            "echo via runc; grep NoNewPrivs /proc/self/status; exit 6",
        ],
    );
    let (state, log) = f.run(&spec).await?;
    ensure!(exit_code(&state)? == 6, "{state:?}");
    ensure!(
        log.contains("via runc") && log.contains("NoNewPrivs:\t1"),
        "{log:?}"
    );

    let missing = f.spec("missing", &["nope"]);
    match f.rt.start(&missing).await {
        Err(Error::Start { message, .. }) => {
            ensure!(message.contains("executable file not found"), "{message:?}")
        }
        other => bail!("expected a start error, got {other:?}"),
    }

    let sleeper = f.spec("s", &["sleep", "1000"]);
    f.rt.start(&sleeper).await?;
    let (code, out) = exec_output(&f, &sleeper.id, "id -u; exit 2").await?;
    ensure!(code == 2 && out == "0\n", "{code} {out:?}");
    let mut p =
        f.rt.exec(
            &sleeper.id,
            &ExecSpec {
                args: vec!["sh".into(), "-c".into(), "read x; stty size".into()],
                tty: true,
                stdin: true,
                ..Default::default()
            },
        )
        .await?;
    p.resize(90, 20)?;
    let mut pty = p.pty.take().context("no pty")?;
    pty.write_all(b"go\n").await?;
    let mut out = Vec::new();
    pty.read_to_end(&mut out).await?;
    ensure!(p.wait().await? == 0);
    let out = String::from_utf8_lossy(&out);
    ensure!(out.contains("20 90"), "runc tty: {out:?}");
    f.rt.kill(&sleeper.id, Signal::SIGKILL)?;
    ensure!(exit_code(&f.rt.wait(&sleeper.id).await?)? == 137);
    Ok(())
}
