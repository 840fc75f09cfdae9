//! The real node's pod logic (workers, restarts, init order, deletion, re-adoption) against a
//! real in-process API server, with a recording fake runtime and network below it: containers
//! here are scripts (`["run", "<ms>", "<exit code>"]` exits after that long, anything else runs
//! until signalled). The real runtime is exercised by the e2e suite.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kubelet::node::cri::{
    ContainerRequest, Cri, Image, ImageError, Listed, Net, Sandbox, StartError, State, Stats,
};
use kubelet::node::{NodeConfig, register, run};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct FakeCri(Arc<CriState>);

impl std::ops::Deref for FakeCri {
    type Target = CriState;
    fn deref(&self) -> &CriState {
        &self.0
    }
}

#[derive(Default)]
struct CriState {
    containers: Mutex<HashMap<String, (ContainerRequest, State)>>,
    changed: Notify,
    starts: Mutex<Vec<(String, String)>>,
}

impl CriState {
    fn set(&self, id: &str, state: State) {
        if let Some(c) = self.containers.lock().unwrap().get_mut(id)
            && matches!(c.1, State::Running { .. })
        {
            c.1 = state;
        }
        self.changed.notify_waiters();
    }

    fn exited(code: i32) -> State {
        State::Exited {
            code,
            oom_killed: false,
            started_at: Some(Timestamp::now()),
            finished_at: Timestamp::now(),
            message: String::new(),
        }
    }

    fn started(&self) -> Vec<(String, String)> {
        self.starts.lock().unwrap().clone()
    }
}

impl Cri for FakeCri {
    fn ensure_image<'a>(
        &'a self,
        reference: &'a str,
        _pull_policy: &'a str,
        _auth: &'a [(String, String, String)],
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(async move {
            if reference.contains("missing") {
                return Err(ImageError::Pull(format!("{reference}: not found")));
            }
            Ok(Image {
                id: "sha256:abc".into(),
                name: reference.into(),
                cmd: vec!["sleep".into()],
                ..Default::default()
            })
        })
    }

    fn start<'a>(&'a self, req: &'a ContainerRequest) -> BoxFuture<'a, Result<State, StartError>> {
        Box::pin(async move {
            let state = State::Running {
                pid: 4242,
                started_at: Timestamp::now(),
            };
            self.containers
                .lock()
                .unwrap()
                .insert(req.id.clone(), (req.clone(), state.clone()));
            self.starts.lock().unwrap().push((
                req.labels["io.kubernetes.container.name"].clone(),
                req.id.clone(),
            ));
            if req.args.first().map(String::as_str) == Some("run") {
                let ms: u64 = req.args[1].parse().unwrap();
                let code: i32 = req.args[2].parse().unwrap();
                let me = self.clone();
                let id = req.id.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    me.set(&id, CriState::exited(code));
                });
            }
            Ok(state)
        })
    }

    fn state(&self, id: &str) -> Option<State> {
        self.containers.lock().unwrap().get(id).map(|c| c.1.clone())
    }

    fn list(&self) -> Vec<Listed> {
        self.containers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, (req, st))| Listed {
                id: id.clone(),
                labels: req.labels.clone(),
                state: st.clone(),
                log_path: req.log_path.clone(),
            })
            .collect()
    }

    fn signal(&self, id: &str, signal: i32) {
        self.set(id, CriState::exited(128 + signal));
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, State> {
        Box::pin(async move {
            loop {
                let notified = self.changed.notified();
                match self.state(id) {
                    Some(s @ State::Exited { .. }) => return s,
                    None => return CriState::exited(137),
                    _ => {}
                }
                notified.await;
            }
        })
    }

    fn remove(&self, id: &str) {
        self.containers.lock().unwrap().remove(id);
        self.changed.notify_waiters();
    }

    fn stats(&self, _id: &str) -> Option<Stats> {
        None
    }

    fn exec_sync<'a>(
        &'a self,
        _id: &'a str,
        args: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(i32, Vec<u8>), String>> {
        Box::pin(async move {
            Ok((
                if args.first().map(String::as_str) == Some("false") {
                    1
                } else {
                    0
                },
                vec![],
            ))
        })
    }
}

#[derive(Clone, Default)]
struct FakeNet(Arc<NetState>);

impl std::ops::Deref for FakeNet {
    type Target = NetState;
    fn deref(&self) -> &NetState {
        &self.0
    }
}

#[derive(Default)]
struct NetState {
    sandboxes: Mutex<BTreeMap<String, u8>>,
}

impl Net for FakeNet {
    fn setup<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Sandbox, String>> {
        Box::pin(async move {
            let mut s = self.sandboxes.lock().unwrap();
            let n = s.len() as u8 + 2;
            let last = *s.entry(uid.to_string()).or_insert(n);
            Ok(Sandbox {
                netns: PathBuf::from(format!("/run/fake/{uid}")),
                ip: Ipv4Addr::new(10, 99, 0, last),
            })
        })
    }

    fn teardown<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.sandboxes.lock().unwrap().remove(uid);
            Ok(())
        })
    }

    fn list(&self) -> Vec<String> {
        self.sandboxes.lock().unwrap().keys().cloned().collect()
    }
}

struct Node {
    server: testkit::TestServer,
    client: kube::Client,
    cri: FakeCri,
    net: FakeNet,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

async fn start_node(
    server: testkit::TestServer,
    cri: FakeCri,
    net: FakeNet,
    dir: tempfile::TempDir,
) -> Result<Node> {
    let client = server.client.clone();
    let mut cfg = NodeConfig::new("n1".into(), Ipv4Addr::LOCALHOST, dir.path().join("agent"));
    cfg.pod_cidr = Some("10.42.0.0/24".into());
    let reg = register(&client, &mut cfg).await?;
    let stop = CancellationToken::new();
    let task = {
        let (client, cri, net, stop) = (client.clone(), cri.clone(), net.clone(), stop.clone());
        tokio::spawn(async move {
            run(client, cfg, reg.machine, Arc::new(cri), Arc::new(net), stop)
                .await
                .unwrap();
        })
    };
    Ok(Node {
        server,
        client,
        cri,
        net,
        stop,
        task,
        dir,
    })
}

async fn node() -> Result<Node> {
    let server = testkit::TestServer::start().await?;
    start_node(
        server,
        FakeCri::default(),
        FakeNet::default(),
        tempfile::tempdir()?,
    )
    .await
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    spec["nodeName"] = json!("n1");
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

async fn wait_pod(
    api: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    testkit::wait_for(what, Duration::from_secs(20), || async {
        let p = api.get_opt(name).await.ok().flatten()?;
        let v = serde_json::to_value(&p).ok()?;
        check(&v).then_some(v)
    })
    .await
}

#[tokio::test]
async fn pod_runs_gets_an_ip_and_is_ready() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "web",
            json!({"containers": [{"name": "c", "image": "busybox"}]}),
        ),
    )
    .await?;
    let p = wait_pod(&api, "web", "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
    .await?;
    assert_eq!(p["status"]["podIP"], "10.99.0.2");
    assert_eq!(p["status"]["hostIP"], "127.0.0.1");
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["image"], "docker.io/library/busybox:latest");
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap()
            .starts_with("containerd://")
    );
    assert!(cs["state"]["running"]["startedAt"].is_string());
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}

#[tokio::test]
async fn crashing_container_backs_off_and_counts_restarts() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "crash",
            json!({"containers": [
        {"name": "c", "image": "busybox", "command": ["run", "50", "3"]}]}),
        ),
    )
    .await?;
    let p = wait_pod(&api, "crash", "CrashLoopBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await?;
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(
        cs["restartCount"], 1,
        "the first restart is immediate, then back-off: {cs}"
    );
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert!(
        cs["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=c pod=crash_default(")
    );
    assert_eq!(p["status"]["phase"], "Running");
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}

#[tokio::test]
async fn restart_policy_never_ends_the_pod() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "ok",
            json!({"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "busybox", "command": ["run", "10", "0"]}]}),
        ),
    )
    .await?;
    api.create(
        &PostParams::default(),
        &pod(
            "bad",
            json!({"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "busybox", "command": ["run", "10", "2"]}]}),
        ),
    )
    .await?;
    let ok = wait_pod(&api, "ok", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await?;
    assert_eq!(
        ok["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let bad = wait_pod(&api, "bad", "Failed", |p| p["status"]["phase"] == "Failed").await?;
    assert_eq!(
        bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        2
    );
    // Terminal pods release their network.
    testkit::wait_for("sandboxes released", Duration::from_secs(10), || async {
        n.net.list().is_empty().then_some(())
    })
    .await?;
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}

#[tokio::test]
async fn init_containers_run_first_in_order() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "init",
            json!({
        "initContainers": [
            {"name": "one", "image": "busybox", "command": ["run", "100", "0"]},
            {"name": "two", "image": "busybox", "command": ["run", "100", "0"]}],
        "containers": [{"name": "app", "image": "busybox"}]}),
        ),
    )
    .await?;
    let pending = wait_pod(&api, "init", "initializing", |p| {
        p["status"]["initContainerStatuses"][0]["state"]["running"].is_object()
    })
    .await?;
    assert_eq!(pending["status"]["phase"], "Pending");
    assert_eq!(
        pending["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    wait_pod(&api, "init", "Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await?;
    let order: Vec<String> = n.cri.started().into_iter().map(|(c, _)| c).collect();
    assert_eq!(order, ["one", "two", "app"]);
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}

#[tokio::test]
async fn deletion_stops_containers_and_removes_everything() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "doomed",
            json!({"containers": [{"name": "c", "image": "busybox"}]}),
        ),
    )
    .await?;
    wait_pod(&api, "doomed", "Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await?;
    api.delete("doomed", &DeleteParams::default()).await?;
    testkit::wait_for("pod gone", Duration::from_secs(20), || async {
        matches!(api.get_opt("doomed").await, Ok(None)).then_some(())
    })
    .await?;
    assert!(n.cri.list().is_empty(), "containers removed");
    assert!(n.net.list().is_empty(), "sandbox removed");
    let pods_dir = n.dir.path().join("agent/pods");
    let left = std::fs::read_dir(&pods_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pod directories removed");
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}

#[tokio::test]
async fn a_restarted_agent_adopts_running_containers() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "keep",
            json!({"containers": [{"name": "c", "image": "busybox"}]}),
        ),
    )
    .await?;
    wait_pod(&api, "keep", "Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await?;
    let before = n.cri.started();
    n.stop.cancel();
    n.task.await?;
    // The "agent" restarts over the same runtime state.
    let again = start_node(n.server, n.cri.clone(), n.net.clone(), n.dir).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        again.cri.started(),
        before,
        "no container was started again"
    );
    let p = wait_pod(&api, "keep", "still Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await?;
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    again.stop.cancel();
    again.task.await?;
    again.server.shutdown().await
}

#[tokio::test]
async fn missing_images_report_err_image_pull() -> Result<()> {
    let n = node().await?;
    let api: Api<Pod> = Api::namespaced(n.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod(
            "noimg",
            json!({"containers": [{"name": "c", "image": "missing:1"}]}),
        ),
    )
    .await?;
    let p = wait_pod(&api, "noimg", "ErrImagePull", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    })
    .await?;
    assert_eq!(p["status"]["phase"], "Pending");
    n.stop.cancel();
    n.task.await?;
    n.server.shutdown().await
}
