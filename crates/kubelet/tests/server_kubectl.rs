//! The kubelet API end to end: a real in-process API server, a Node whose kubelet endpoint is
//! this test's kubelet server on 127.0.0.1, and the real kubectl (1.33 over WebSocket, 1.33
//! forced to SPDY, and 1.27, which only speaks SPDY) running `logs`, `exec`, `attach`,
//! `port-forward`, `cp` and `top` through the API server's proxy. Behind the kubelet server
//! is a test `PodStreams` that runs real local processes (the seam above the container
//! runtime) and forwards to real local TCP servers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{LogParams, Patch, PatchParams, PostParams};
use kubelet::server::{
    self, AsyncReadWrite, AttachRequest, ContainerStats, ExecRequest, ExitStatus, KubeletTls,
    LogRequest, LogStream, NodeStats, PodStats, PodStreams, PortForwardRequest, Session,
    StreamError, Usage,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The test's node agent: real processes on this machine.
#[derive(Default)]
struct LocalStreams {
    /// What `logs` was last asked.
    last_log: Mutex<Option<LogRequest>>,
    /// The follow-mode log script waits for this file before printing its second line.
    gate: PathBuf,
    /// Terminal sizes applied to tty sessions, in order.
    sizes: Arc<Mutex<Vec<(u16, u16)>>>,
}

fn exit_of(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Exited(c),
        (None, Some(sig)) => ExitStatus::Exited(128 + sig),
        _ => ExitStatus::Failed("unknown exit".into()),
    }
}

/// Runs `argv` with the requested pipes and hands its ends to the server.
fn spawn_session(
    argv: &[String],
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<Session, StreamError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| StreamError::BadRequest(format!("starting {argv:?}: {e}")))?;
    let session = Session {
        stdin: child.stdin.take().map(|s| Box::pin(s) as server::Writer),
        stdout: child.stdout.take().map(|s| Box::pin(s) as server::Reader),
        stderr: child.stderr.take().map(|s| Box::pin(s) as server::Reader),
        resize: None,
        exit: Box::pin(async move {
            match child.wait().await {
                Ok(s) => exit_of(s),
                Err(e) => ExitStatus::Failed(e.to_string()),
            }
        }),
    };
    Ok(session)
}

/// Sets a terminal's size with `stty`.
async fn apply_size(tty: &Path, size: server::TerminalSize) -> bool {
    tokio::process::Command::new("stty")
        .arg("-F")
        .arg(tty)
        .args([
            "rows",
            &size.height.to_string(),
            "cols",
            &size.width.to_string(),
        ])
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Runs `argv` on a new pseudo-terminal. The process starts once the client's first terminal
/// size has been applied (or after a second without one), so it never sees a 0x0 terminal;
/// later sizes are applied as they come.
fn spawn_tty_session(argv: &[String], sizes: Arc<Mutex<Vec<(u16, u16)>>>) -> Result<Session> {
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )?;
    let tty_path = nix::unistd::ttyname(&pty.slave)?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave))
        // A session dropped by the server (client gone) must not leave the process, and so
        // the terminal and the blocking reads on it, behind.
        .kill_on_drop(true);
    let master = std::fs::File::from(pty.master);
    let writer = tokio::fs::File::from_std(master.try_clone()?);
    let reader = tokio::fs::File::from_std(master);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<server::TerminalSize>(4);
    let (child_tx, child_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(Some(first)) =
            tokio::time::timeout(Duration::from_secs(1), resize_rx.recv()).await
            && apply_size(&tty_path, first).await
        {
            sizes.lock().unwrap().push((first.width, first.height));
        }
        let child = cmd.spawn();
        // The command held the only copies of the slave end besides the child's.
        drop(cmd);
        let _ = child_tx.send(child);
        while let Some(size) = resize_rx.recv().await {
            if apply_size(&tty_path, size).await {
                sizes.lock().unwrap().push((size.width, size.height));
            }
        }
    });
    Ok(Session {
        stdin: Some(Box::pin(writer)),
        stdout: Some(Box::pin(reader)),
        stderr: None,
        resize: Some(resize_tx),
        exit: Box::pin(async move {
            match child_rx.await {
                Ok(Ok(mut child)) => match child.wait().await {
                    Ok(s) => exit_of(s),
                    Err(e) => ExitStatus::Failed(e.to_string()),
                },
                Ok(Err(e)) => ExitStatus::Failed(format!("starting the command: {e}")),
                Err(_) => ExitStatus::Failed("the session ended before the command started".into()),
            }
        }),
    })
}

fn check_pod(namespace: &str, pod: &str) -> Result<(), StreamError> {
    if namespace == "default" && (pod == "demo" || pod == "multi") {
        Ok(())
    } else {
        Err(StreamError::NotFound(format!(
            "pod {namespace}/{pod} is not on this node"
        )))
    }
}

impl PodStreams for LocalStreams {
    fn logs(&self, req: LogRequest) -> BoxFuture<'_, Result<LogStream, StreamError>> {
        Box::pin(async move {
            check_pod(&req.container.namespace, &req.container.pod)?;
            *self.last_log.lock().unwrap() = Some(req.clone());
            let script = if req.follow {
                format!(
                    "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
                    self.gate.display()
                )
            } else {
                let mut s = "printf 'one\\ntwo\\nthree\\n'".to_string();
                if let Some(n) = req.tail_lines {
                    s.push_str(&format!(" | tail -n {n}"));
                }
                s
            };
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            let stdout = child.stdout.take().expect("piped");
            let stream = futures::stream::unfold((stdout, child), |(mut out, child)| async move {
                let mut buf = vec![0u8; 4096];
                match out.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => Some((Ok(Bytes::copy_from_slice(&buf[..n])), (out, child))),
                    Err(e) => Some((Err(e), (out, child))),
                }
            });
            Ok(Box::pin(stream) as LogStream)
        })
    }

    fn exec(&self, req: ExecRequest) -> BoxFuture<'_, Result<Session, StreamError>> {
        Box::pin(async move {
            check_pod(&req.container.namespace, &req.container.pod)?;
            let s = req.streams;
            if s.tty {
                return spawn_tty_session(&req.command, self.sizes.clone())
                    .map_err(|e| StreamError::Internal(format!("{e:#}")));
            }
            spawn_session(&req.command, s.stdin, s.stdout, s.stderr)
        })
    }

    fn attach(&self, req: AttachRequest) -> BoxFuture<'_, Result<Session, StreamError>> {
        Box::pin(async move {
            check_pod(&req.container.namespace, &req.container.pod)?;
            let s = req.streams;
            // The "container" attached to answers one line and exits.
            let argv: Vec<String> = ["sh", "-c", "read l; echo attached:$l; exit 4"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            spawn_session(&argv, s.stdin, s.stdout, s.stderr)
        })
    }

    fn port_forward(
        &self,
        req: PortForwardRequest,
    ) -> BoxFuture<'_, Result<Box<dyn AsyncReadWrite>, StreamError>> {
        Box::pin(async move {
            check_pod(&req.namespace, &req.pod)?;
            let c = TcpStream::connect(("127.0.0.1", req.port))
                .await
                .map_err(|e| {
                    StreamError::Internal(format!("dial tcp 127.0.0.1:{}: {e}", req.port))
                })?;
            Ok(Box::new(c) as Box<dyn AsyncReadWrite>)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<NodeStats, StreamError>> {
        Box::pin(async move {
            // This process's own CPU time and resident memory: real, monotonic counters.
            let stat = std::fs::read_to_string("/proc/self/stat")
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let rss_pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let usage = Usage {
                time: jiff::Timestamp::now(),
                cpu_usage_core_nanoseconds: ticks * 10_000_000,
                memory_working_set_bytes: rss_pages * 4096,
            };
            Ok(NodeStats {
                node_name: "kn1".into(),
                node: usage,
                pods: vec![PodStats {
                    namespace: "default".into(),
                    name: "demo".into(),
                    uid: String::new(),
                    usage,
                    containers: vec![ContainerStats {
                        name: "main".into(),
                        usage,
                    }],
                }],
            })
        })
    }
}

/// An API server, a kubelet server for node `kn1`, and pods `demo` (one container, on kn1),
/// `multi` (two containers, on kn1) and `pending` (unscheduled).
struct Cluster {
    server: testkit::TestServer,
    streams: Arc<LocalStreams>,
    kubelet_port: u16,
    stop: CancellationToken,
    home: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let server = testkit::TestServer::start().await?;
        let home = tempfile::tempdir()?;
        let streams = Arc::new(LocalStreams {
            gate: home.path().join("gate"),
            ..Default::default()
        });
        let ca = std::fs::read_to_string(server.dir.path().join("server/tls/ca.crt"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let kubelet_port = listener.local_addr()?.port();
        let stop = CancellationToken::new();
        let tls = KubeletTls {
            client_ca_pem: ca,
            serving: None,
        };
        tokio::spawn(server::serve(listener, tls, streams.clone(), stop.clone()));

        let nodes: Api<Node> = Api::all(server.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "kn1"},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "kn1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}],
        }});
        nodes
            .patch_status("kn1", &PatchParams::default(), &Patch::Merge(&status))
            .await?;

        let pods: Api<Pod> = Api::namespaced(server.client.clone(), "default");
        for (name, containers, node) in [
            ("demo", vec!["main"], Some("kn1")),
            ("multi", vec!["a", "b"], Some("kn1")),
            ("pending", vec!["main"], None),
        ] {
            let cs: Vec<_> = containers
                .iter()
                .map(|c| json!({"name": c, "image": "busybox", "stdin": true}))
                .collect();
            let mut spec = json!({"containers": cs});
            if let Some(n) = node {
                spec["nodeName"] = json!(n);
            }
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec,
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            if node.is_some() {
                let status = json!({"status": {"phase": "Running"}});
                pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
            }
        }
        Ok(Cluster {
            server,
            streams,
            kubelet_port,
            stop,
            home,
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.server.running.kubeconfig.clone()
    }

    /// A kubectl command (`version`: "" for the dispatcher's choice, 1.33 here, or "1.27").
    fn kubectl(&self, version: &str, args: &[&str]) -> tokio::process::Command {
        let bin = if version.is_empty() {
            "kubectl".to_string()
        } else {
            format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}")
        };
        let mut c = tokio::process::Command::new(bin);
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: tokio::process::Command, input: Option<&[u8]>) -> Result<Run> {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().context("starting kubectl")?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(data).await?;
        drop(stdin);
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("kubectl did not finish in time")??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Environment variables for a kubectl run.
type Env = &'static [(&'static str, &'static str)];

/// kubectl flavours: (label, version, extra environment).
const FLAVOURS: &[(&str, &str, Env)] = &[
    ("1.33 websocket", "", &[]),
    (
        "1.33 spdy",
        "",
        &[
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
        ],
    ),
    ("1.27 spdy", "1.27", &[]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_output_and_exit_codes_over_websocket_and_spdy() -> Result<()> {
    let c = Cluster::start().await?;
    for (label, version, env) in FLAVOURS {
        let mut cmd = c.kubectl(
            version,
            &[
                "exec",
                "demo",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        );
        cmd.envs(env.iter().copied());
        let r = run(cmd, None).await?;
        assert_eq!(r.code, 3, "{label}: {}", r.stderr);
        assert_eq!(r.stdout, "out\n", "{label}");
        assert!(r.stderr.contains("err"), "{label}: {}", r.stderr);

        let mut cmd = c.kubectl(version, &["exec", "demo", "--", "true"]);
        cmd.envs(env.iter().copied());
        let r = run(cmd, None).await?;
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, ""),
            "{label}: {}",
            r.stderr
        );

        // stdin reaches the process and its end closes the process's stdin.
        let mut cmd = c.kubectl(
            version,
            &["exec", "-i", "demo", "--", "sh", "-c", "cat; echo done"],
        );
        cmd.envs(env.iter().copied());
        let r = run(cmd, Some(b"hello\nworld\n")).await?;
        assert_eq!(r.code, 0, "{label}: {}", r.stderr);
        assert_eq!(r.stdout, "hello\nworld\ndone\n", "{label}");

        // A large output arrives whole (many frames, backpressure).
        let mut cmd = c.kubectl(
            version,
            &[
                "exec",
                "demo",
                "--",
                "sh",
                "-c",
                "head -c 3000000 /dev/zero | tr '\\0' x",
            ],
        );
        cmd.envs(env.iter().copied());
        let r = run(cmd, None).await?;
        assert_eq!(r.code, 0, "{label}: {}", r.stderr);
        assert_eq!(r.stdout.len(), 3_000_000, "{label}");

        // A pod the node does not have: the kubelet's 404 reaches the user.
        let mut cmd = c.kubectl(version, &["exec", "missing", "--", "true"]);
        cmd.envs(env.iter().copied());
        let r = run(cmd, None).await?;
        assert_ne!(r.code, 0, "{label}");
        assert!(r.stderr.contains("not found"), "{label}: {}", r.stderr);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_relays_stdin_and_output() -> Result<()> {
    let c = Cluster::start().await?;
    for (label, version, env) in FLAVOURS {
        let mut cmd = c.kubectl(version, &["attach", "-i", "demo", "-c", "main"]);
        cmd.envs(env.iter().copied());
        let r = run(cmd, Some(b"hi\n")).await?;
        assert!(
            r.stdout.contains("attached:hi"),
            "{label}: {} / {}",
            r.stdout,
            r.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_with_options_and_validation() -> Result<()> {
    let c = Cluster::start().await?;
    let r = run(c.kubectl("", &["logs", "demo"]), None).await?;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "one\ntwo\nthree\n"),
        "{}",
        r.stderr
    );

    let r = run(
        c.kubectl(
            "",
            &["logs", "demo", "--tail=2", "--timestamps", "--since=1h"],
        ),
        None,
    )
    .await?;
    assert_eq!(r.stdout, "two\nthree\n", "{}", r.stderr);
    let asked = c
        .streams
        .last_log
        .lock()
        .unwrap()
        .clone()
        .context("no log request")?;
    assert_eq!(asked.tail_lines, Some(2));
    assert!(asked.timestamps && !asked.follow && !asked.previous);
    let since = asked.since.context("since")?;
    let age = jiff::Timestamp::now().duration_since(since).as_secs();
    assert!((3590..=3610).contains(&age), "{age}");

    let r = run(c.kubectl("", &["logs", "demo", "--limit-bytes=5"]), None).await?;
    assert_eq!(r.stdout, "one\nt");

    // Follow: the first line arrives while the log is still open.
    let mut follow = c.kubectl("", &["logs", "-f", "demo"]).spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("first"));
    std::fs::write(&c.streams.gate, b"")?;
    let second = tokio::time::timeout(WAIT, lines.next_line()).await??;
    assert_eq!(second.as_deref(), Some("second"));
    let status = tokio::time::timeout(WAIT, follow.wait()).await??;
    assert!(status.success());

    // The API server validates pod and container like upstream.
    let pods: Api<Pod> = Api::namespaced(c.server.client.clone(), "default");
    let err = |r: kube::Result<String>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => (0, format!("{other:?}")),
    };
    let (code, msg) = err(pods.logs("multi", &LogParams::default()).await);
    assert_eq!(code, 400);
    assert_eq!(
        msg,
        "a container name must be specified for pod multi, choose one of: [a b]"
    );
    let p = LogParams {
        container: Some("c".into()),
        ..Default::default()
    };
    let (code, msg) = err(pods.logs("multi", &p).await);
    assert_eq!(
        (code, msg.as_str()),
        (400, "container c is not valid for pod multi")
    );
    let (code, msg) = err(pods.logs("pending", &LogParams::default()).await);
    assert_eq!(
        (code, msg.as_str()),
        (400, "pod pending does not have a host assigned")
    );
    let p = LogParams {
        container: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs("multi", &p).await?, "one\ntwo\nthree\n");
    Ok(())
}

/// A TCP server answering every line with `echo:<line>`.
async fn echo_server() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("echo:{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_websocket_tunnel_and_spdy() -> Result<()> {
    let c = Cluster::start().await?;
    let target = echo_server().await?;
    for (label, version, env) in FLAVOURS {
        let mut cmd = c.kubectl(
            version,
            &["port-forward", "pod/demo", &format!(":{target}")],
        );
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let local: u16 = tokio::time::timeout(WAIT, async {
            while let Some(line) = out.next_line().await? {
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let port = rest.split_whitespace().next().unwrap_or_default();
                    return Ok::<u16, anyhow::Error>(port.parse()?);
                }
            }
            bail!("kubectl port-forward ended without forwarding")
        })
        .await??;
        // Two connections one after the other, each a full exchange.
        for round in 0..2 {
            let s = TcpStream::connect(("127.0.0.1", local)).await?;
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(format!("ping{round}\n").as_bytes()).await?;
            let got = tokio::time::timeout(WAIT, lines.next_line()).await??;
            assert_eq!(
                got.as_deref(),
                Some(format!("echo:ping{round}").as_str()),
                "{label}"
            );
        }
        child.kill().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_copies_both_ways_through_exec_and_tar() -> Result<()> {
    let c = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.txt");
    let data: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&src, &data)?;
    let into = dir.path().join("in-pod");
    std::fs::create_dir(&into)?;
    // "In the pod" is this machine for the test node: copy into a directory, then back out.
    let dest = format!("demo:{}", into.join("copied.txt").display());
    let r = run(
        c.kubectl("", &["cp", &src.display().to_string(), &dest]),
        None,
    )
    .await?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(into.join("copied.txt"))?, data);
    let back = dir.path().join("back.txt");
    let r = run(
        c.kubectl("", &["cp", &dest, &back.display().to_string()]),
        None,
    )
    .await?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&back)?, data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_reads_kubelet_stats_through_metrics_api() -> Result<()> {
    let c = Cluster::start().await?;
    let kc = c.kubeconfig();
    let home = c.home.path().to_path_buf();
    let out = testkit::wait_for("kubectl top pod to show demo", WAIT, || {
        let (kc, home) = (kc.clone(), home.clone());
        async move { top(&kc, &home, &["top", "pod", "demo", "--no-headers"]).await }
    })
    .await?;
    let cols: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(cols.first(), Some(&"demo"), "{out}");
    assert!(cols.get(1).is_some_and(|c| c.ends_with('m')), "{out}");
    assert!(
        cols.get(2)
            .is_some_and(|m| m.ends_with("Mi") && m != &"0Mi"),
        "{out}"
    );
    let out = testkit::wait_for("kubectl top node to show kn1", WAIT, || {
        let (kc, home) = (kc.clone(), home.clone());
        async move { top(&kc, &home, &["top", "node", "kn1", "--no-headers"]).await }
    })
    .await?;
    assert!(out.starts_with("kn1"), "{out}");
    Ok(())
}

/// `kubectl top …` output once it reports real (kubelet) numbers: non-zero memory.
async fn top(kubeconfig: &Path, home: &Path, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let memory_known = text
        .split_whitespace()
        .any(|c| c.ends_with("Mi") && c != "0Mi");
    (out.status.success() && memory_known).then_some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_requires_a_client_certificate_from_the_cluster_ca() -> Result<()> {
    let c = Cluster::start().await?;
    let tls = c.server.dir.path().join("server/tls");
    let url = format!("https://127.0.0.1:{}/healthz", c.kubelet_port);
    let curl = |extra: Vec<String>| {
        let url = url.clone();
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-sk", "--max-time", "10"])
                .args(extra)
                .arg(url)
                .output()
                .await?;
            Ok::<_, anyhow::Error>((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
    };
    let (ok, _) = curl(vec![]).await?;
    assert!(!ok, "a client without a certificate was served");
    let (ok, body) = curl(vec![
        "--cert".into(),
        tls.join("admin.crt").display().to_string(),
        "--key".into(),
        tls.join("admin.key").display().to_string(),
    ])
    .await?;
    assert!(ok && body == "ok", "{body}");
    // A certificate from another CA is refused.
    let other = server::self_signed_serving_cert(&[])?;
    let d = tempfile::tempdir()?;
    std::fs::write(d.path().join("c.pem"), other.cert_pem)?;
    std::fs::write(d.path().join("k.pem"), other.key_pem)?;
    let (ok, _) = curl(vec![
        "--cert".into(),
        d.path().join("c.pem").display().to_string(),
        "--key".into(),
        d.path().join("k.pem").display().to_string(),
    ])
    .await?;
    assert!(!ok, "a certificate from another CA was accepted");
    Ok(())
}

/// A tmux server of its own (a private socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux {
            socket: format!("skiff-kubelet-test-{}", std::process::id()),
        }
    }

    /// Runs a tmux command. Its output is not captured: the tmux server that `new-session`
    /// starts would inherit the pipes and keep them open.
    async fn run(&self, args: &[&str]) -> Result<()> {
        let status = tokio::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("tmux {args:?} failed: {status}");
        }
        Ok(())
    }

    /// What session `t`'s terminal shows now.
    async fn screen(&self, t: &str) -> Result<String> {
        let out = tokio::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(["capture-pane", "-p", "-t", t])
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn screen_shows(&self, t: &str, text: &str) -> Result<String> {
        testkit::wait_for(&format!("the terminal to show {text:?}"), WAIT, || async {
            let screen = self.screen(t).await.ok()?;
            screen.contains(text).then_some(screen)
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_exec_gets_a_terminal_that_follows_resizes() -> Result<()> {
    let c = Cluster::start().await?;
    let tmux = Tmux::new();
    for (i, (label, version, env)) in FLAVOURS.iter().enumerate() {
        c.streams.sizes.lock().unwrap().clear();
        let t = format!("t{i}");
        let t = t.as_str();
        tmux.run(&["new-session", "-d", "-s", t, "-x", "100", "-y", "30"])
            .await?;
        let bin = if version.is_empty() {
            "kubectl".to_string()
        } else {
            format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}")
        };
        let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let line = format!(
            "HOME={} {env}{bin} --kubeconfig {} exec -it demo -- sh -c 'stty size; read x; stty size; echo got:$x; exit 5'; echo kubectl\"\"-exit:$?",
            c.home.path().display(),
            c.kubeconfig().display()
        );
        tmux.run(&["send-keys", "-t", t, &line, "Enter"]).await?;
        tmux.screen_shows(t, "30 100")
            .await
            .context(label.to_string())?;
        tmux.run(&["resize-window", "-t", t, "-x", "120", "-y", "40"])
            .await?;
        let sizes = c.streams.sizes.clone();
        testkit::wait_for("the new size to reach the terminal", WAIT, || {
            let sizes = sizes.clone();
            async move { sizes.lock().unwrap().contains(&(120, 40)).then_some(()) }
        })
        .await
        .context(label.to_string())?;
        tmux.run(&["send-keys", "-t", t, "hello", "Enter"]).await?;
        let screen = tmux
            .screen_shows(t, "kubectl-exit:")
            .await
            .context(label.to_string())?;
        assert!(screen.contains("40 120"), "{label}: {screen}");
        assert!(screen.contains("got:hello"), "{label}: {screen}");
        assert!(screen.contains("kubectl-exit:5"), "{label}: {screen}");
    }
    Ok(())
}

/// A WebSocket to the API server at `path` offering `protocol`, authenticated with the admin
/// certificate: what the Python client does for `stream()` and `portforward()`.
async fn api_websocket(
    c: &Cluster,
    path: &str,
    protocol: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = c.server.dir.path().join("server/tls");
    let pem = |f: &str| std::fs::read(tls.join(f));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem("ca.crt")?[..]) {
        roots.add(cert?)?;
    }
    let certs =
        rustls_pemfile::certs(&mut &pem("admin.crt")?[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &pem("admin.key")?[..])?.context("admin key")?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)?;
    let addr = c.server.running.addr;
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut req = format!("wss://localhost:{}{path}", addr.port()).into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse()?);
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    assert_eq!(chosen, Some(protocol));
    Ok(ws)
}

/// Reads channel messages until the server closes: (channel, payload) in order.
async fn channel_messages<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    base64: bool,
    until: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> Result<Vec<(u8, Vec<u8>)>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine as _;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !until(&got) {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if !base64 && !b.is_empty() => {
                    got.push((b[0], b[1..].to_vec()))
                }
                Some(Ok(Message::Text(t))) if base64 && !t.is_empty() => {
                    let data =
                        base64::engine::general_purpose::STANDARD.decode(&t.as_str()[1..])?;
                    got.push((t.as_bytes()[0] - b'0', data));
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("waiting for channel messages")??;
    Ok(got)
}

fn joined(msgs: &[(u8, Vec<u8>)], channel: u8) -> String {
    let bytes: Vec<u8> = msgs
        .iter()
        .filter(|(c, _)| *c == channel)
        .flat_map(|(_, d)| d.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_protocols_exec_v4_and_channel_port_forward() -> Result<()> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let c = Cluster::start().await?;
    let exec = "/api/v1/namespaces/default/pods/demo/exec?command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262%3B%20exit%207&stdout=true&stderr=true";
    let mut ws = api_websocket(&c, exec, "v4.channel.k8s.io").await?;
    let msgs = channel_messages(&mut ws, false, |_| false).await?;
    assert_eq!(joined(&msgs, 1), "out\n");
    assert_eq!(joined(&msgs, 2), "err\n");
    let status: serde_json::Value = serde_json::from_str(&joined(&msgs, 3))?;
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "7", "{status}");

    // base64 framing, stdin in.
    let exec =
        "/api/v1/namespaces/default/pods/demo/exec?command=head&command=-n1&stdin=true&stdout=true";
    let mut ws = api_websocket(&c, exec, "v4.base64.channel.k8s.io").await?;
    ws.send(Message::Text("0aGkK".into())).await?; // "hi\n"
    let msgs = channel_messages(&mut ws, true, |_| false).await?;
    assert_eq!(joined(&msgs, 1), "hi\n");
    let status: serde_json::Value = serde_json::from_str(&joined(&msgs, 3))?;
    assert_eq!(status["status"], "Success", "{status}");

    // Port-forward in channels: the port first on both channels, then data.
    let target = echo_server().await?;
    let path = format!("/api/v1/namespaces/default/pods/demo/portforward?ports={target}");
    let mut ws = api_websocket(&c, &path, "v4.channel.k8s.io").await?;
    let hello = channel_messages(&mut ws, false, |m| m.len() >= 2).await?;
    assert_eq!(
        hello,
        vec![
            (0, target.to_le_bytes().to_vec()),
            (1, target.to_le_bytes().to_vec())
        ]
    );
    let mut frame = vec![0u8];
    frame.extend_from_slice(b"ping\n");
    ws.send(Message::Binary(frame.into())).await?;
    let echoed = channel_messages(&mut ws, false, |m| joined(m, 0).contains('\n')).await?;
    assert_eq!(joined(&echoed, 0), "echo:ping\n");
    Ok(())
}
