//! Pod volumes on the node, under `<agent>/pods/<uid>/volumes/<plugin>/<name>`: emptyDir (a
//! directory, or tmpfs for `medium: Memory`), configMap, secret (on tmpfs), downwardAPI and
//! projected volumes written like upstream's atomic writer (files under a timestamped
//! `..<ts>` directory, a `..data` symlink swapped with one rename, and per-key symlinks through
//! it, so running containers see whole updates), hostPath with its type checks, and
//! persistentVolumeClaim through the bound PV's host path.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};

use super::spec::{ConfigError, Sources, field_ref};

/// What a volume resolved to on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub path: PathBuf,
    /// configMap/secret/downwardAPI/projected volumes are always mounted read-only.
    pub readonly: bool,
}

/// Files a projected-kind volume should contain: relative path -> (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Why a volume is not ready: a config error (the pod cannot start) or something to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    Config(String),
    /// Not yet (e.g. the claim is not bound): retried.
    Wait(String),
}

impl From<ConfigError> for VolumeError {
    fn from(e: ConfigError) -> Self {
        VolumeError::Config(e.0)
    }
}

fn plugin(v: &Volume) -> &'static str {
    if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        "kubernetes.io~other"
    }
}

/// The directory of a pod-managed volume.
pub fn volume_dir(pod_dir: &Path, v: &Volume) -> PathBuf {
    pod_dir.join("volumes").join(plugin(v)).join(&v.name)
}

/// Checks a key-to-path `path` like upstream validation: relative, no `..`, not empty.
fn safe_relative(path: &str) -> Result<(), VolumeError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.starts_with("..");
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Config(format!(
            "invalid volume item path {path:?}: must be relative and must not contain '..'"
        )))
    }
}

fn items_payload(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), default_mode));
            }
        }
        Some(items) => {
            for it in items {
                safe_relative(&it.path)?;
                match data.get(&it.key) {
                    Some(v) => {
                        let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
                        out.insert(it.path.clone(), (v.clone(), mode));
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::Config(format!(
                            "configmap or secret references non-existent key {}: {what}",
                            it.key
                        )));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn config_map_bytes(d: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
    d.iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect()
}

/// The payload of a configMap, secret, downwardAPI or projected volume.
pub fn payload(pod: &Pod, v: &Volume, sources: &Sources) -> Result<Option<Payload>, VolumeError> {
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.map(|m| m as u32).unwrap_or(0o644);
        let optional = cm.optional == Some(true);
        return match sources.config_maps.get(&cm.name).cloned().flatten() {
            Some(d) => items_payload(
                &config_map_bytes(&d),
                cm.items.as_ref(),
                mode,
                &cm.name,
                optional,
            )
            .map(Some),
            None if optional => Ok(Some(Payload::new())),
            None => Err(VolumeError::Wait(format!(
                "configmap \"{}\" not found",
                cm.name
            ))),
        };
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.map(|m| m as u32).unwrap_or(0o644);
        let optional = s.optional == Some(true);
        return match sources.secrets.get(&name).cloned().flatten() {
            Some(d) => items_payload(&d, s.items.as_ref(), mode, &name, optional).map(Some),
            None if optional => Ok(Some(Payload::new())),
            None => Err(VolumeError::Wait(format!("secret \"{name}\" not found"))),
        };
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.map(|m| m as u32).unwrap_or(0o644);
        return downward(pod, d.items.as_deref().unwrap_or_default(), mode, sources).map(Some);
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.map(|m| m as u32).unwrap_or(0o644);
        let mut out = Payload::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let optional = cm.optional == Some(true);
                match sources.config_maps.get(&cm.name).cloned().flatten() {
                    Some(d) => out.extend(items_payload(
                        &config_map_bytes(&d),
                        cm.items.as_ref(),
                        mode,
                        &cm.name,
                        optional,
                    )?),
                    None if optional => {}
                    None => {
                        return Err(VolumeError::Wait(format!(
                            "configmap \"{}\" not found",
                            cm.name
                        )));
                    }
                }
            }
            if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                match sources.secrets.get(&s.name).cloned().flatten() {
                    Some(d) => out.extend(items_payload(
                        &d,
                        s.items.as_ref(),
                        mode,
                        &s.name,
                        optional,
                    )?),
                    None if optional => {}
                    None => {
                        return Err(VolumeError::Wait(format!(
                            "secret \"{}\" not found",
                            s.name
                        )));
                    }
                }
            }
            if let Some(d) = &src.downward_api {
                out.extend(downward(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    sources,
                )?);
            }
            if src.service_account_token.is_some() {
                return Err(VolumeError::Config(
                    "serviceAccountToken projections are not supported by this node yet".into(),
                ));
            }
        }
        return Ok(Some(out));
    }
    Ok(None)
}

fn downward(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: u32,
    sources: &Sources,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    for it in items {
        safe_relative(&it.path)?;
        let value = if let Some(f) = &it.field_ref {
            field_ref(pod, &f.field_path)?
        } else if let Some(r) = &it.resource_field_ref {
            let spec = pod.spec.as_ref();
            let c = spec
                .and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(&c.name) == r.container_name.as_ref())
                })
                .ok_or_else(|| {
                    VolumeError::Config(format!(
                        "resourceFieldRef names unknown container {:?}",
                        r.container_name.as_deref().unwrap_or_default()
                    ))
                })?;
            super::spec::resource_ref(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                sources,
            )?
        } else {
            String::new()
        };
        let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
        out.insert(it.path.clone(), (value.into_bytes(), mode));
    }
    Ok(out)
}

fn io(e: std::io::Error, what: &str, path: &Path) -> VolumeError {
    VolumeError::Config(format!("{what} {}: {e}", path.display()))
}

/// Writes `payload` into `dir` atomically (upstream's AtomicWriter): unchanged content is left
/// alone; otherwise a new `..<timestamp>` directory is filled, `..data` is swapped to it with
/// one rename, per-key symlinks are added or removed, and the old directory is deleted.
/// Returns whether anything changed.
pub fn write_atomic(dir: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io(e, "creating", dir))?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(cur) = &current {
        let cur_dir = dir.join(cur);
        if same_content(&cur_dir, payload) {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let new_dir = dir.join(&stamp);
    std::fs::create_dir(&new_dir).map_err(|e| io(e, "creating", &new_dir))?;
    for (rel, (content, mode)) in payload {
        let file = new_dir.join(rel);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(e, "creating", parent))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&file)
            .map_err(|e| io(e, "writing", &file))?;
        f.write_all(content).map_err(|e| io(e, "writing", &file))?;
        // The umask may have narrowed the mode; set it as asked.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| io(e, "chmod", &file))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(|e| io(e, "linking", &tmp_link))?;
    std::fs::rename(&tmp_link, &data_link).map_err(|e| io(e, "swapping", &data_link))?;
    // Top-level names point through ..data.
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)
                .map_err(|e| io(e, "linking", &link))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                if name != "..data" && name != stamp {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            } else if !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(true)
}

fn same_content(dir: &Path, payload: &Payload) -> bool {
    let mut count = 0;
    for (rel, (content, mode)) in payload {
        let p = dir.join(rel);
        match (std::fs::read(&p), std::fs::metadata(&p)) {
            (Ok(c), Ok(m)) if &c == content && m.permissions().mode() & 0o777 == mode & 0o777 => {}
            _ => return false,
        }
        count += 1;
    }
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                _ => files += 1,
            }
        }
    }
    files == count
}

/// Checks and prepares a hostPath volume per its `type`.
pub fn host_path(path: &str, ty: Option<&str>) -> Result<PathBuf, VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(VolumeError::Config(format!(
            "hostPath {path:?} must be absolute"
        )));
    }
    let meta = std::fs::metadata(&p);
    let bad = |want: &str| {
        VolumeError::Config(format!(
            "hostPath type check failed: {path} is not a {want}"
        ))
    };
    match ty.unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&p)
                    .map_err(|e| io(e, "creating", &p))?;
            } else if !p.is_dir() {
                return Err(bad("directory"));
            }
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("directory")),
            Err(_) => {
                return Err(VolumeError::Config(format!(
                    "hostPath type check failed: {path} is not a directory"
                )));
            }
        },
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(e, "creating", parent))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(&p)
                    .map_err(|e| io(e, "creating", &p))?;
            } else if !p.is_file() {
                return Err(bad("file"));
            }
        }
        "File" => match meta {
            Ok(m) if m.is_file() => {}
            _ => return Err(bad("file")),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => {}
            _ => return Err(bad("socket")),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => {}
            _ => return Err(bad("character device")),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => {}
            _ => return Err(bad("block device")),
        },
        other => {
            return Err(VolumeError::Config(format!(
                "unknown hostPath type {other:?}"
            )));
        }
    }
    Ok(p)
}

/// Parses a quantity like `64Mi` into bytes for a tmpfs size.
fn size_bytes(q: &str) -> Option<u64> {
    crate::quantity::to_millis(q)
        .ok()
        .map(|m| (m / 1000).max(0) as u64)
}

/// Mounts a tmpfs at `dir` unless something is mounted there already.
pub fn ensure_tmpfs(dir: &Path, size: Option<&str>) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|e| io(e, "creating", dir))?;
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut opts = String::from("mode=0755");
    if let Some(bytes) = size.and_then(size_bytes).filter(|b| *b > 0) {
        opts.push_str(&format!(",size={bytes}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| VolumeError::Config(format!("mounting tmpfs at {}: {e}", dir.display())))
}

/// Mount points at or under `dir`, from /proc/self/mountinfo (octal escapes decoded).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape_mount(s: &str) -> String {
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

fn is_mount_point(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Unmounts everything under `dir` (deepest first) and removes it.
pub fn remove_pod_dir(dir: &Path) -> std::io::Result<()> {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %m.display(), "unmounting: {e}");
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Prepares an emptyDir volume.
pub fn empty_dir(
    dir: &Path,
    medium: Option<&str>,
    size_limit: Option<&str>,
) -> Result<(), VolumeError> {
    if medium == Some("Memory") {
        ensure_tmpfs(dir, size_limit)
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(dir)
            .map_err(|e| io(e, "creating", dir))?;
        // emptyDir is world-writable, as upstream makes it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| io(e, "chmod", dir))
    }
}

/// The host path of a volume mount with `subPath`, refusing paths that escape the volume.
pub fn sub_path(volume: &Path, sub: &str) -> Result<PathBuf, VolumeError> {
    if sub.is_empty() {
        return Ok(volume.to_path_buf());
    }
    safe_relative(sub)?;
    let p = volume.join(sub);
    // Resolve symlinks and make sure we are still inside the volume.
    if !p.exists() {
        std::fs::create_dir_all(&p).map_err(|e| io(e, "creating", &p))?;
    }
    let real = p.canonicalize().map_err(|e| io(e, "resolving", &p))?;
    let base = volume
        .canonicalize()
        .map_err(|e| io(e, "resolving", volume))?;
    if !real.starts_with(&base) {
        return Err(VolumeError::Config(format!(
            "subPath {sub:?} escapes the volume"
        )));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let mut p = Payload::new();
        p.insert("a".into(), (b"1".to_vec(), 0o644));
        p.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(&dir, &p).unwrap());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"2");
        assert!(
            !write_atomic(&dir, &p).unwrap(),
            "unchanged payload rewrites nothing"
        );
        p.remove("sub/b");
        p.insert("a".into(), (b"3".to_vec(), 0o644));
        assert!(write_atomic(&dir, &p).unwrap());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"3");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        let stamps = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(stamps, 1, "old payload directories are removed");
    }

    #[test]
    fn hostile_item_paths_are_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        assert!(safe_relative("a/b").is_ok());
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let m = missing.to_str().unwrap();
        assert!(host_path(m, Some("Directory")).is_err());
        assert!(host_path(m, Some("File")).is_err());
        assert!(host_path("relative", None).is_err());
        host_path(m, Some("DirectoryOrCreate")).unwrap();
        assert!(missing.is_dir());
        assert!(host_path(m, Some("File")).is_err());
        let f = tmp.path().join("f");
        host_path(f.to_str().unwrap(), Some("FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(host_path(f.to_str().unwrap(), Some("Socket")).is_err());
    }

    #[test]
    fn sub_paths_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("v");
        std::fs::create_dir(&vol).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("link")).unwrap();
        assert!(sub_path(&vol, "ok/dir").is_ok());
        assert!(sub_path(&vol, "link").is_err());
        assert!(sub_path(&vol, "../x").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
