//! Pulls from a real registry: Debian's `docker-registry` (distribution 2.x) started on a random
//! loopback port with its own config and storage in a temp dir, once with htpasswd auth and once
//! without. The busybox test image is pushed into it with oci-client, then pulled by the store.

mod image_support;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::*;
use runtime::image::{Error, ImageStore, Progress, RegistryAuth};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry process, killed by PID when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: apt-get install -y docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = htpasswd {
            let hash = bcrypt::hash(pass, 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            addr,
            _dir: dir,
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "registry on {} not ready: {}",
                self.addr,
                std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The blobs of the busybox test image: (config, layer blob, layer media type).
fn busybox_blobs() -> (Vec<u8>, Vec<u8>, String) {
    let mut files = std::collections::HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(busybox_tar()).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let name = name.trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let blob =
        |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config = blob(m["config"]["digest"].as_str().unwrap());
    let layer = &m["layers"][0];
    (
        config,
        blob(layer["digest"].as_str().unwrap()),
        layer["mediaType"].as_str().unwrap().to_string(),
    )
}

async fn push(addr: &str, repo: &str, tag: &str, auth: Option<(&str, &str)>) -> String {
    let (config, layer, media_type) = busybox_blobs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let r = oci_client::Reference::with_tag(addr.into(), repo.into(), tag.into());
    let auth = match auth {
        Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.into(), p.into()),
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };
    let layers = [oci_client::client::ImageLayer::new(layer, media_type, None)];
    let config = oci_client::client::Config::new(
        config,
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let resp = client
        .push(&r, &layers, config, &auth, None)
        .await
        .expect("pushing the test image");
    // `manifest_url` ends in the manifest digest for this registry.
    resp.manifest_url.rsplit('/').next().unwrap().to_string()
}

fn layer_events(events: &[Progress]) -> (usize, usize) {
    let done = events
        .iter()
        .filter(|e| matches!(e, Progress::LayerDone { .. }))
        .count();
    let reused = events
        .iter()
        .filter(|e| matches!(e, Progress::LayerExists { .. }))
        .count();
    (done, reused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_basic_auth_and_refuses_bad_credentials() {
    let reg = Registry::start(Some(("skiff", "s3cret")));
    let digest = push(&reg.addr, "test/busybox", "v1", Some(("skiff", "s3cret"))).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("agent")).unwrap();
    let name = format!("{}/test/busybox:v1", reg.addr);

    // No credentials, wrong ones, and a missing tag: pull errors, nothing recorded.
    let err = store.pull(&name, None, &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");
    let wrong = RegistryAuth {
        username: "skiff".into(),
        password: "nope".into(),
    };
    let err = store
        .pull(&name, Some(&wrong), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");
    let good = RegistryAuth {
        username: "skiff".into(),
        password: "s3cret".into(),
    };
    let missing = format!("{}/test/busybox:nope", reg.addr);
    let err = store
        .pull(&missing, Some(&good), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());

    let mut events = Vec::new();
    let t = Instant::now();
    let img = store
        .pull(&name, Some(&good), &mut |p| events.push(p))
        .await
        .unwrap();
    eprintln!("pull of busybox from the local registry: {:?}", t.elapsed());
    assert_eq!(img.name, name);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(layer_events(&events), (1, 0));
    assert!(img.layers[0].join("bin/busybox").exists());
    let info = &store.list().unwrap()[0];
    assert_eq!(
        info.repo_digests,
        vec![format!("{}/test/busybox@{digest}", reg.addr)]
    );

    // Pulled again (imagePullPolicy Always): the layer is reused.
    let mut events = Vec::new();
    store
        .pull(&name, Some(&good), &mut |p| events.push(p))
        .await
        .unwrap();
    assert_eq!(layer_events(&events), (0, 1));

    // By digest, and found by digest afterwards.
    let by_digest = format!("{}/test/busybox@{digest}", reg.addr);
    let img2 = store
        .pull(&by_digest, Some(&good), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(img2.id, img.id);
    assert_eq!(store.resolve(&by_digest).unwrap().unwrap().id, img.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_anonymously_and_shares_layers_with_imports() {
    let reg = Registry::start(None);
    push(&reg.addr, "busybox", "latest", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("agent")).unwrap();
    // The same image imported first: the pull downloads no layer.
    store.import(&busybox_tar(), &mut |_| {}).unwrap();
    let name = format!("{}/busybox", reg.addr);
    let mut events = Vec::new();
    let img = store
        .pull(&name, None, &mut |p| events.push(p))
        .await
        .unwrap();
    assert_eq!(img.name, format!("{name}:latest"));
    assert_eq!(layer_events(&events), (0, 1));
    let info = store.list().unwrap();
    assert_eq!(info.len(), 1, "one image, two names: {info:?}");
    assert_eq!(info[0].names.len(), 2);
    let layers: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("agent/layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(layers.len(), 1);
}
