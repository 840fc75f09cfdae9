//! Builders for image tarballs used by the image tests: layers (including hostile entries the
//! `tar` crate would refuse to write), OCI layouts and docker archives, compressed or not.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Plain => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// A layer tar written entry by entry, with raw names.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100, "test names stay short");
        h.as_gnu_mut().unwrap().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    pub fn dir(mut self, name: &str) -> Self {
        let mut h = Self::header(name, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_mode(name, data, 0o644, 0, 0)
    }

    pub fn file_mode(mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(name, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Self {
        let mut h = Self::header(name, kind, 0o777, 0);
        let t = target.as_bytes();
        h.as_gnu_mut().unwrap().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, name, target)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, name, target)
    }

    pub fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(name, kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    /// A PAX extended header (`path=`, `SCHILY.xattr.…=`) followed by a regular file entry
    /// whose own header names `name`; the PAX records override it.
    pub fn pax_file(mut self, records: &[(&str, &[u8])], name: &str, data: &[u8]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = Self::header(
            "PaxHeader",
            tar::EntryType::XHeader,
            0o644,
            body.len() as u64,
        );
        h.set_cksum();
        self.b.append(&h, body.as_slice()).unwrap();
        self.file(name, data)
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// An image to put in an archive: its names, layers (uncompressed tars) and Cmd.
pub struct Img {
    pub name: Option<String>,
    pub layers: Vec<Vec<u8>>,
    pub cmd: Vec<String>,
}

impl Img {
    pub fn new(name: &str, layers: Vec<Vec<u8>>) -> Img {
        Img {
            name: Some(name.to_string()),
            layers,
            cmd: vec!["sh".into()],
        }
    }

    fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("sha256:{}", sha256_hex(l)))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "A=b"],
                "Cmd": self.cmd,
                "Entrypoint": null,
                "WorkingDir": "/w",
                "User": "65534",
                "ExposedPorts": {"80/tcp": {}},
                "Labels": {"x": "y"},
                "StopSignal": "SIGQUIT",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    pub fn id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.config()))
    }
}

/// Files of an outer tar, by name.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI image layout with the given layer compression.
pub fn oci_layout(imgs: &[Img], c: Comp) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut manifests = Vec::new();
    for img in imgs {
        let mut layers = Vec::new();
        for l in &img.layers {
            let blob = compress(l, c);
            let d = sha256_hex(&blob);
            let mt = match c {
                Comp::Plain => "application/vnd.oci.image.layer.v1.tar",
                Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            layers.push(serde_json::json!({"mediaType": mt, "digest": format!("sha256:{d}"), "size": blob.len()}));
            files.push((format!("blobs/sha256/{d}"), blob));
        }
        let config = img.config();
        let cd = sha256_hex(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cd}"), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let md = sha256_hex(&manifest);
        let mut desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{md}"),
            "size": manifest.len(),
        });
        if let Some(n) = &img.name {
            desc["annotations"] = serde_json::json!({"io.containerd.image.name": n});
        }
        manifests.push(desc);
        files.push((format!("blobs/sha256/{cd}"), config));
        files.push((format!("blobs/sha256/{md}"), manifest));
    }
    files.push((
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    ));
    tar_of(&files)
}

/// A `docker save` archive (layers uncompressed, `<id>.json` configs).
pub fn docker_archive(imgs: &[Img]) -> Vec<u8> {
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for img in imgs {
        let mut layer_files = Vec::new();
        for l in &img.layers {
            let name = format!("{}/layer.tar", sha256_hex(l));
            layer_files.push(name.clone());
            files.push((name, l.clone()));
        }
        let config = img.config();
        let cfile = format!("{}.json", sha256_hex(&config));
        files.push((cfile.clone(), config));
        entries.push(serde_json::json!({
            "Config": cfile,
            "RepoTags": img.name.iter().collect::<Vec<_>>(),
            "Layers": layer_files,
        }));
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&entries).unwrap(),
    ));
    tar_of(&files)
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// The busybox test image built by scripts/build-test-images (built once per test binary).
pub fn busybox_tar() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // The script's default place; it is idempotent and replaces the file atomically.
        let out = root.join("target/test-images");
        let st = std::process::Command::new(root.join("scripts/build-test-images"))
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running scripts/build-test-images");
        assert!(st.success(), "scripts/build-test-images failed");
        out.join("busybox.tar")
    })
    .clone()
}

/// Every path under `dir`, relative, sorted (symlinks not followed).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
