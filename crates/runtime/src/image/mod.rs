//! OCI images: import, pull, content store, unpacked layers, garbage collection.
//!
//! Layout of the agent directory `A` (`<data-dir>/agent`):
//! - `A/images/`: drop folder; tarballs placed there are imported by [`ImageStore::auto_import`]
//!   once per content hash and pinned against garbage collection.
//! - `A/content/index.json`: the image index (replaced atomically by rename), next to its locks
//!   (see [`index`]), and `A/content/blobs/sha256/<hex>`: manifests and configs.
//! - `A/layers/<diffid-hex>/fs`: each layer unpacked once, shared by every image that has it;
//!   `A/layers/<diffid-hex>/complete` is written after the unpacked tree was synced, so a layer
//!   cut short by a crash is unpacked again. Compressed layer blobs are not kept.
//!
//! The CLI (`skiff image`) and a running agent may use the same directory at once: writes to the
//! index are serialized by a lock, and a long-lived [`ImageStore`] re-reads the index whenever
//! the file changed.
//!
//! Removing: [`ImageStore::remove`] removes pinned images too (it is an operator's explicit
//! request; the pin only protects against [`ImageStore::gc`]); a removed drop-folder tarball is
//! not imported again unless its content changes. Layers no image references are deleted unless
//! an overlay mount visible to this process still uses them as a lower directory.

mod archive;
/// The Go/OCI name of this machine's architecture (`amd64`, `arm64`), as images and nodes name it.
pub use archive::oci_arch;
mod digest;
mod index;
mod pull;
pub mod reference;
mod unpack;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use digest::{Counting, Hashing};
use index::{ImageRecord, Index, Layout, Lock, Stamp};
pub use pull::RegistryAuth;
pub use reference::Reference;
pub use unpack::UnpackStats;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("refusing layer {layer}: entry {entry:?} {reason}")]
    Hostile {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("unsupported image format in {input}: {reason}")]
    Unsupported { input: String, reason: String },
    #[error("invalid image data in {input}: {reason}")]
    Invalid { input: String, reason: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image id prefix {0:?} matches more than one image")]
    Ambiguous(String),
    #[error("pulling {reference}: {reason}")]
    Pull { reference: String, reason: String },
    /// The cause is in the message (not chained), so `{e}` and `{e:#}` both say it once.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl Error {
    fn io(op: &'static str, path: &Path, error: io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_path_buf(),
            error,
        }
    }
}

/// What an import or pull is doing, for progress bars.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A compressed tarball is being decompressed before it is read: `done` of `total` bytes.
    Decompress { done: u64, total: u64 },
    /// Layer blobs of `total` bytes will be read (import) or downloaded (pull); layers already
    /// present are not counted.
    Start { total: u64 },
    /// `done` of the announced total so far; `layer` is the diff_id being worked on.
    Advance { layer: String, done: u64 },
    /// The layer was already unpacked (shared with another image).
    LayerExists { layer: String },
    /// The layer was unpacked and verified.
    LayerDone { layer: String, size: u64 },
    /// The image was recorded in the index.
    Image(ImageInfo),
}

/// An image as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageInfo {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Normalized `domain/path:tag` names; empty for an untagged image.
    pub names: Vec<String>,
    /// `domain/path@sha256:<manifest digest>` for each repository it came from.
    pub repo_digests: Vec<String>,
    /// Bytes of file data in its layers.
    pub size: u64,
    pub pinned: bool,
    /// Unix seconds when it was first imported or pulled.
    pub created: i64,
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `sha256:<config digest>`.
    pub id: String,
    /// The normalized reference it was found by.
    pub name: String,
    /// Unpacked layer directories (`…/fs`), BOTTOM layer first. Overlayfs' `lowerdir` lists the
    /// top layer first, so reverse this list for it.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `80/tcp`-style keys of `ExposedPorts`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub os: String,
    pub architecture: String,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    /// Disk usage of the filesystem holding the agent directory, in percent, before.
    pub usage_pct: f64,
    /// Ids of the images removed.
    pub removed_images: Vec<String>,
    /// Layer directories deleted.
    pub removed_layers: usize,
    /// Bytes of file data in the deleted layers.
    pub freed_bytes: u64,
}

/// Capacity and free space of a filesystem; a seam so tests can fake the numbers.
pub trait DiskUsage: Send + Sync {
    fn stats(&self, path: &Path) -> io::Result<DiskStats>;
}

#[derive(Debug, Clone, Copy)]
pub struct DiskStats {
    pub capacity: u64,
    pub available: u64,
}

/// `statvfs` of the real filesystem.
pub struct Statvfs;

impl DiskUsage for Statvfs {
    fn stats(&self, path: &Path) -> io::Result<DiskStats> {
        let s = rustix::fs::statvfs(path)?;
        Ok(DiskStats {
            capacity: s.f_blocks * s.f_frsize,
            available: s.f_bavail * s.f_frsize,
        })
    }
}

pub struct StoreOptions {
    pub disk: Arc<dyn DiskUsage>,
    /// Registries (`host[:port]`) pulled from over plain HTTP. Loopback registries
    /// (`localhost`, `127.*`, `[::1]`) always are, as in Docker.
    pub insecure_registries: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            disk: Arc::new(Statvfs),
            insecure_registries: Vec::new(),
        }
    }
}

/// The node's images. Cheap to clone; clones share the cached index.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    opts: StoreOptions,
    cache: Mutex<Option<(Stamp, Arc<Index>)>>,
}

/// Marker written in `layers/<hex>/complete`.
#[derive(Serialize, Deserialize)]
struct LayerMarker {
    diff_id: String,
    size: u64,
    entries: u64,
}

impl ImageStore {
    pub fn open(agent_dir: &Path) -> Result<ImageStore> {
        Self::open_with(agent_dir, StoreOptions::default())
    }

    pub fn open_with(agent_dir: &Path, opts: StoreOptions) -> Result<ImageStore> {
        let layout = Layout {
            root: agent_dir.to_path_buf(),
        };
        for dir in [
            layout.drop_dir(),
            layout.blobs(),
            layout.tmp(),
            layout.layers(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        }
        // Layers hold setuid binaries of images: no way in for other users of the host.
        for dir in [layout.layers(), layout.content()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("restricting", &dir, e))?;
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                layout,
                opts,
                cache: Mutex::new(None),
            }),
        };
        // Leftovers of a crashed import, unless an import is running right now.
        if let Some(_l) = Lock::try_exclusive(&store.layout().content_lock())? {
            store.clean_tmp();
        }
        Ok(store)
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The agent directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The drop folder watched by [`ImageStore::auto_import`].
    pub fn drop_dir(&self) -> PathBuf {
        self.layout().drop_dir()
    }

    /// The index, re-read when the file changed since the last call.
    fn index(&self) -> Result<Arc<Index>> {
        let path = self.layout().index();
        let stamp = index::stamp(&path)?;
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(s), Some((cs, idx))) = (stamp, cache.as_ref())
            && s == *cs
        {
            return Ok(idx.clone());
        }
        let idx = Arc::new(index::read(&path)?);
        *cache = stamp.map(|s| (s, idx.clone()));
        Ok(idx)
    }

    /// Read-modify-write of the index under its lock; written only when `f` changed it.
    fn update<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let layout = self.layout();
        let _lock = Lock::acquire(&layout.index_lock(), index::Mode::Exclusive)?;
        let path = layout.index();
        let old = index::read(&path)?;
        let mut idx = old.clone();
        let out = f(&mut idx)?;
        let bytes = serde_json::to_vec_pretty(&idx).map_err(|e| Error::Invalid {
            input: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let old_bytes = serde_json::to_vec_pretty(&old).unwrap_or_default();
        if bytes != old_bytes {
            index::write_atomic(&path, &bytes)?;
        }
        Ok(out)
    }

    /// Imports every image in a docker-archive or OCI image-layout tarball (plain, gzip or
    /// zstd). Importing the same tarball again changes nothing.
    pub fn import(
        &self,
        file: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<ImageInfo>> {
        self.import_pinned(file, false, progress)
    }

    fn import_pinned(
        &self,
        file: &Path,
        pin: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<ImageInfo>> {
        let layout = self.layout();
        let _content = Lock::acquire(&layout.content_lock(), index::Mode::Shared)?;
        let display = file.display().to_string();
        let (tar_path, _tmp) = archive::plain_tar(file, &layout.tmp(), &mut |done, total| {
            progress(Progress::Decompress { done, total })
        })?;
        let tar = archive::TarIndex::build(&tar_path, &display)?;
        let images = archive::find_images(&tar, &display)?;
        let mut seen = HashSet::new();
        let total = images
            .iter()
            .flat_map(|i| &i.layers)
            .filter(|l| seen.insert(l.diff_id.clone()) && !self.layer_complete(&l.diff_id))
            .map(|l| l.size)
            .sum();
        progress(Progress::Start { total });
        let mut done = 0u64;
        let mut out = Vec::new();
        for img in images {
            for layer in &img.layers {
                let base = done;
                let mut open = || -> io::Result<Box<dyn Read + Send>> {
                    match tar.open(&layer.file) {
                        Some(r) => Ok(Box::new(r?)),
                        None => Err(io::Error::new(io::ErrorKind::NotFound, "blob missing")),
                    }
                };
                let label = format!("{display}: {}", layer.file);
                let unpacked = self.ensure_layer(
                    &layer.diff_id,
                    &mut open,
                    layer.digest.as_deref(),
                    &label,
                    &mut |n| {
                        progress(Progress::Advance {
                            layer: layer.diff_id.clone(),
                            done: base + n,
                        })
                    },
                )?;
                match unpacked {
                    Some(size) => {
                        done += layer.size;
                        progress(Progress::LayerDone {
                            layer: layer.diff_id.clone(),
                            size,
                        });
                    }
                    None => progress(Progress::LayerExists {
                        layer: layer.diff_id.clone(),
                    }),
                }
            }
            let repos = img
                .names
                .iter()
                .map(|n| reference::split_tag(n).0.to_string())
                .collect();
            let info = self.record(
                &img.config_digest,
                &img.config,
                &img.manifest,
                img.names,
                repos,
                pin,
            )?;
            progress(Progress::Image(info.clone()));
            out.push(info);
        }
        Ok(out)
    }

    fn layer_complete(&self, diff_id: &str) -> bool {
        self.layout().layer(diff_id).join("complete").exists()
    }

    fn layer_size(&self, diff_id: &str) -> Option<u64> {
        let b = std::fs::read(self.layout().layer(diff_id).join("complete")).ok()?;
        serde_json::from_slice::<LayerMarker>(&b)
            .ok()
            .map(|m| m.size)
    }

    /// Unpacks the layer `diff_id` from the blob `open` gives, unless it is already there.
    /// Returns the unpacked size, or `None` when the layer was already complete.
    fn ensure_layer(
        &self,
        diff_id: &str,
        open: &mut dyn FnMut() -> io::Result<Box<dyn Read + Send>>,
        blob_digest: Option<&str>,
        label: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<u64>> {
        let layout = self.layout();
        if !diff_id
            .strip_prefix("sha256:")
            .is_some_and(reference::is_sha256_hex)
        {
            return Err(Error::Invalid {
                input: label.to_string(),
                reason: format!("malformed diff_id {diff_id:?}"),
            });
        }
        if self.layer_complete(diff_id) {
            return Ok(None);
        }
        let _lock = Lock::acquire(&layout.layer_lock(diff_id), index::Mode::Exclusive)?;
        if self.layer_complete(diff_id) {
            return Ok(None);
        }
        let dir = layout.layer(diff_id);
        if dir.exists() {
            // Cut short by a crash: start again.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        let fs = dir.join("fs");
        std::fs::create_dir_all(&fs).map_err(|e| Error::io("creating", &fs, e))?;
        let result = (|| -> Result<UnpackStats> {
            let blob = open().map_err(|e| Error::io("opening the blob of", Path::new(label), e))?;
            let mut outer = Hashing::new(Counting::new(blob, &mut *progress));
            let stats = {
                let buffered = BufReader::with_capacity(256 * 1024, &mut outer);
                let mut inner = Hashing::new(archive::decompress(buffered, label)?);
                let stats = unpack::unpack(&mut inner, &fs, diff_id)?;
                inner.drain().map_err(|e| Error::Invalid {
                    input: label.to_string(),
                    reason: format!("reading the layer: {e}"),
                })?;
                let (actual, _) = inner.finish();
                if actual != diff_id {
                    return Err(Error::DigestMismatch {
                        what: format!("uncompressed layer {label}"),
                        expected: diff_id.to_string(),
                        actual,
                    });
                }
                stats
            };
            outer
                .drain()
                .map_err(|e| Error::io("reading", Path::new(label), e))?;
            let (actual, _) = outer.finish();
            if let Some(want) = blob_digest
                && actual != want
            {
                return Err(Error::DigestMismatch {
                    what: format!("layer blob {label}"),
                    expected: want.to_string(),
                    actual,
                });
            }
            Ok(stats)
        })();
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                if let Err(rm) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %rm, "removing a refused layer");
                }
                return Err(e);
            }
        };
        let marker = serde_json::to_vec(&LayerMarker {
            diff_id: diff_id.to_string(),
            size: stats.bytes,
            entries: stats.entries,
        })
        .unwrap_or_default();
        index::write_atomic(&dir.join("complete"), &marker)?;
        Ok(Some(stats.bytes))
    }

    fn put_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let path = self.layout().blob(digest);
        if path.exists() {
            return Ok(());
        }
        index::write_atomic(&path, data)
    }

    /// Stores config and manifest and records the image, moving `names` to it from any other
    /// image (a retag, like `docker load`).
    fn record(
        &self,
        config_digest: &str,
        config: &[u8],
        manifest: &[u8],
        names: Vec<String>,
        repos: Vec<String>,
        pin: bool,
    ) -> Result<ImageInfo> {
        let config_parsed = parse_config(config, config_digest)?;
        let manifest_digest = format!("sha256:{}", digest::sha256_hex(manifest));
        self.put_blob(config_digest, config)?;
        self.put_blob(&manifest_digest, manifest)?;
        let size = config_parsed
            .diff_ids
            .iter()
            .map(|d| self.layer_size(d).unwrap_or(0))
            .sum();
        let rec = self.update(|idx| {
            for other in idx.images.iter_mut().filter(|i| i.id != config_digest) {
                other.names.retain(|n| !names.contains(n));
            }
            match idx.images.iter_mut().find(|i| i.id == config_digest) {
                Some(r) => {
                    for n in &names {
                        if !r.names.contains(n) {
                            r.names.push(n.clone());
                        }
                    }
                    for repo in &repos {
                        if !r.repos.contains(repo) {
                            r.repos.push(repo.clone());
                        }
                    }
                    r.pinned |= pin;
                    r.manifest_digest = manifest_digest.clone();
                    Ok(r.clone())
                }
                None => {
                    let r = ImageRecord {
                        id: config_digest.to_string(),
                        names: names.clone(),
                        repos: repos.clone(),
                        manifest_digest: manifest_digest.clone(),
                        diff_ids: config_parsed.diff_ids.clone(),
                        size,
                        pinned: pin,
                        created: now(),
                    };
                    idx.images.push(r.clone());
                    Ok(r)
                }
            }
        })?;
        Ok(info(&rec))
    }

    /// Imports new tarballs from the drop folder (`A/images/`) and pins them. A file is
    /// recognized by the SHA-256 of its content: one imported (or refused) before is skipped.
    /// Returns the images imported now; a tarball that fails to import is logged and recorded,
    /// not retried until its content changes.
    pub fn auto_import(&self) -> Result<Vec<ImageInfo>> {
        let dir = self.drop_dir();
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        let mut files = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("listing", &dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            // Dot files are copies in progress by convention (rsync, cp --backup).
            if name.starts_with('.') {
                continue;
            }
            let path = ent.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => files.push((name, path, m)),
                _ => continue,
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        // Forget the stat cache of files no longer there (their content hashes stay recorded).
        let present: HashSet<&str> = files.iter().map(|f| f.0.as_str()).collect();
        if self
            .index()?
            .drop_stat
            .keys()
            .any(|k| !present.contains(k.as_str()))
        {
            self.update(|i| {
                i.drop_stat.retain(|k, _| present.contains(k.as_str()));
                Ok(())
            })?;
        }
        let mut out = Vec::new();
        for (name, path, meta) in files {
            use std::os::unix::fs::MetadataExt;
            let idx = self.index()?;
            let stat = |sha256: String| index::DropStat {
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ino: meta.ino(),
                sha256,
            };
            let sha = match idx.drop_stat.get(&name) {
                Some(s) if *s == stat(s.sha256.clone()) => s.sha256.clone(),
                _ => hash_file(&path)?,
            };
            if idx.dropped.contains_key(&sha) {
                if idx.drop_stat.get(&name) != Some(&stat(sha.clone())) {
                    self.update(|i| {
                        i.drop_stat.insert(name.clone(), stat(sha.clone()));
                        Ok(())
                    })?;
                }
                continue;
            }
            let result = self.import_pinned(&path, true, &mut |_| {});
            let rec = match &result {
                Ok(infos) => {
                    tracing::info!(file = %path.display(), images = infos.len(), "imported from the drop folder");
                    index::DropRecord {
                        file: name.clone(),
                        ids: infos.iter().map(|i| i.id.clone()).collect(),
                        error: None,
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "importing from the drop folder failed");
                    index::DropRecord {
                        file: name.clone(),
                        ids: Vec::new(),
                        error: Some(e.to_string()),
                    }
                }
            };
            self.update(|i| {
                i.dropped.insert(sha.clone(), rec);
                i.drop_stat.insert(name.clone(), stat(sha.clone()));
                Ok(())
            })?;
            if let Ok(infos) = result {
                out.extend(infos);
            }
        }
        Ok(out)
    }

    /// The listing entry of one image, found like [`ImageStore::resolve`] finds it (its
    /// `repo_digests` are what the kubelet reports as a container's `imageID`).
    pub fn inspect(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let idx = self.index()?;
        Ok(find(&idx, reference)?.map(|(pos, _)| info(&idx.images[pos])))
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.index()?.images.iter().map(info).collect())
    }

    /// Removes a name from its image (`busybox` untags when the image has other names) or a
    /// whole image (by id, id prefix of at least 4 hex digits, or its only name), pinned or not,
    /// then deletes what no image references any more (unless an import is running: then the
    /// next [`ImageStore::gc`] does).
    pub fn remove(&self, name_or_id: &str) -> Result<()> {
        let key = name_or_id.to_string();
        self.update(|idx| {
            let found = find(idx, &key)?;
            let Some((pos, by_name)) = found else {
                return Err(Error::NotFound(key.clone()));
            };
            let rec = &mut idx.images[pos];
            match by_name {
                Some(name) if rec.names.len() > 1 => rec.names.retain(|n| *n != name),
                _ => {
                    idx.images.remove(pos);
                }
            }
            Ok(())
        })?;
        self.prune()?;
        Ok(())
    }

    /// Finds an image by name (normalized), `name@sha256:<manifest digest>`, or id.
    pub fn resolve(&self, reference: &str) -> Result<Option<ResolvedImage>> {
        let idx = self.index()?;
        let Some((pos, name)) = find(&idx, reference)? else {
            return Ok(None);
        };
        let rec = &idx.images[pos];
        let name = name.unwrap_or_else(|| rec.id.clone());
        let mut layers = Vec::with_capacity(rec.diff_ids.len());
        for d in &rec.diff_ids {
            if !self.layer_complete(d) {
                return Err(Error::Invalid {
                    input: name,
                    reason: format!(
                        "layer {d} is missing from {}; import the image again",
                        self.layout().layers().display()
                    ),
                });
            }
            layers.push(self.layout().layer(d).join("fs"));
        }
        let blob = self.layout().blob(&rec.id);
        let config = std::fs::read(&blob).map_err(|e| Error::io("reading", &blob, e))?;
        let config = parse_config(&config, &rec.id)?.config;
        Ok(Some(ResolvedImage {
            id: rec.id.clone(),
            name,
            layers,
            config,
        }))
    }

    /// Image garbage collection like the kubelet's: when disk usage of the filesystem holding
    /// the agent directory is at or above `high_pct`, removes unpinned images not in `in_use`
    /// (ids or names), oldest first, until the layers they alone use add up to what brings usage
    /// down to `low_pct`; then deletes layers and blobs no image references.
    pub fn gc(&self, in_use: &HashSet<String>, high_pct: u8, low_pct: u8) -> Result<GcReport> {
        let root = self.dir();
        let st = self
            .inner
            .opts
            .disk
            .stats(root)
            .map_err(|e| Error::io("measuring disk usage of", root, e))?;
        let used = st.capacity.saturating_sub(st.available);
        let usage_pct = if st.capacity == 0 {
            0.0
        } else {
            used as f64 * 100.0 / st.capacity as f64
        };
        let mut report = GcReport {
            usage_pct,
            ..GcReport::default()
        };
        if usage_pct >= f64::from(high_pct) {
            let target = (st.capacity as u128 * u128::from(low_pct) / 100) as u64;
            let to_free = used.saturating_sub(target);
            let idx = self.index()?;
            let mut refs: HashMap<&str, usize> = HashMap::new();
            for i in &idx.images {
                for d in &i.diff_ids {
                    *refs.entry(d).or_default() += 1;
                }
            }
            let mut candidates: Vec<&ImageRecord> = idx
                .images
                .iter()
                .filter(|i| !i.pinned)
                .filter(|i| !in_use.contains(&i.id) && !i.names.iter().any(|n| in_use.contains(n)))
                .collect();
            candidates.sort_by_key(|i| (i.created, i.id.clone()));
            let mut freed = 0u64;
            let mut victims = Vec::new();
            for c in candidates {
                if freed >= to_free {
                    break;
                }
                for d in &c.diff_ids {
                    let n = refs.get_mut(d.as_str()).expect("counted above");
                    *n -= 1;
                    if *n == 0 {
                        freed += self.layer_size(d).unwrap_or(0);
                    }
                }
                victims.push(c.id.clone());
            }
            self.update(|idx| {
                idx.images.retain(|i| !victims.contains(&i.id));
                Ok(())
            })?;
            report.removed_images = victims;
        }
        let (layers, bytes) = self.prune()?;
        report.removed_layers = layers;
        report.freed_bytes = bytes;
        Ok(report)
    }

    /// Deletes layers and blobs that no image references, unless an import or pull is running.
    fn prune(&self) -> Result<(usize, u64)> {
        let layout = self.layout();
        let Some(_l) = Lock::try_exclusive(&layout.content_lock())? else {
            tracing::debug!("an import is running; pruning layers later");
            return Ok((0, 0));
        };
        let idx = index::read(&layout.index())?;
        let mut keep_layers = HashSet::new();
        let mut keep_blobs = HashSet::new();
        for i in &idx.images {
            keep_blobs.insert(strip(&i.id).to_string());
            keep_blobs.insert(strip(&i.manifest_digest).to_string());
            for d in &i.diff_ids {
                keep_layers.insert(strip(d).to_string());
            }
        }
        let mounted = mounted_lowerdirs();
        let (mut removed, mut bytes) = (0, 0);
        let dir = layout.layers();
        for ent in std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
            let ent = ent.map_err(|e| Error::io("listing", &dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".lock").unwrap_or(&name);
            if keep_layers.contains(hex) {
                continue;
            }
            let path = ent.path();
            if name.ends_with(".lock") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if mounted.iter().any(|m| m.starts_with(&path)) {
                tracing::info!(layer = %name, "keeping an unreferenced layer: a mount uses it");
                continue;
            }
            let size = self.layer_size(&name).unwrap_or(0);
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("removing", &path, e))?;
            removed += 1;
            bytes += size;
        }
        let blobs = layout.blobs();
        for ent in std::fs::read_dir(&blobs).map_err(|e| Error::io("listing", &blobs, e))? {
            let ent = ent.map_err(|e| Error::io("listing", &blobs, e))?;
            if !keep_blobs.contains(ent.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        self.clean_tmp();
        Ok((removed, bytes))
    }

    fn clean_tmp(&self) {
        let tmp = self.layout().tmp();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for ent in rd.flatten() {
                let _ = std::fs::remove_file(ent.path());
            }
        }
    }

    pub(crate) fn insecure(&self, registry: &str) -> bool {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(registry, |(h, _)| h);
        host == "localhost"
            || host.starts_with("127.")
            || host == "[::1]"
            || self
                .inner
                .opts
                .insecure_registries
                .iter()
                .any(|r| r == registry)
    }
}

fn strip(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn info(r: &ImageRecord) -> ImageInfo {
    ImageInfo {
        id: r.id.clone(),
        names: r.names.clone(),
        repo_digests: r
            .repos
            .iter()
            .map(|repo| format!("{repo}@{}", r.manifest_digest))
            .collect(),
        size: r.size,
        pinned: r.pinned,
        created: r.created,
    }
}

/// Looks `key` up: an id (`sha256:<hex>` or 64 hex digits), a name, `name@digest`, or a unique
/// id prefix of at least 4 hex digits (after names, as in docker: `abcd` may be a repository).
/// Returns the image's position and the normalized name it was found by (none for ids).
fn find(idx: &Index, key: &str) -> Result<Option<(usize, Option<String>)>> {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    let is_hex = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if reference::is_sha256_hex(hex) {
        let id = format!("sha256:{hex}");
        if let Some(p) = idx.images.iter().position(|i| i.id == id) {
            return Ok(Some((p, None)));
        }
    }
    let by_prefix = || -> Result<Option<(usize, Option<String>)>> {
        if hex.len() < 4 || hex.len() > 64 || !is_hex {
            return Ok(None);
        }
        let mut matches = idx
            .images
            .iter()
            .enumerate()
            .filter(|(_, i)| strip(&i.id).starts_with(hex));
        match (matches.next(), matches.next()) {
            (Some((p, _)), None) => Ok(Some((p, None))),
            (Some(_), Some(_)) => Err(Error::Ambiguous(key.to_string())),
            _ => Ok(None),
        }
    };
    if key.starts_with("sha256:") {
        return by_prefix();
    }
    if reference::is_sha256_hex(hex) {
        return Ok(None);
    }
    let r = Reference::parse(key)?;
    if let Some(d) = &r.digest {
        let repo = r.repository();
        return Ok(idx
            .images
            .iter()
            .position(|i| i.manifest_digest == *d && i.repos.contains(&repo))
            .or_else(|| idx.images.iter().position(|i| i.manifest_digest == *d))
            .map(|p| (p, Some(r.to_string()))));
    }
    let name = r.tagged().expect("a reference without digest has a tag");
    if let Some(p) = idx.images.iter().position(|i| i.names.contains(&name)) {
        return Ok(Some((p, Some(name))));
    }
    // Only a bare word can be an id prefix ("abcd", not "abcd:latest" or "x/abcd").
    if key.contains([':', '/', '@']) {
        return Ok(None);
    }
    by_prefix()
}

struct ParsedConfig {
    config: ImageConfig,
    diff_ids: Vec<String>,
}

fn parse_config(bytes: &[u8], digest: &str) -> Result<ParsedConfig> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct Run {
        env: Option<Vec<String>>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
        exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
        labels: Option<BTreeMap<String, String>>,
        stop_signal: Option<String>,
    }
    #[derive(Deserialize)]
    struct Rootfs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        config: Option<Run>,
        rootfs: Rootfs,
    }
    let c: Config = serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
        input: format!("image config {digest}"),
        reason: e.to_string(),
    })?;
    let run = c.config.unwrap_or_default();
    Ok(ParsedConfig {
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            exposed_ports: run
                .exposed_ports
                .map(|p| p.into_keys().collect())
                .unwrap_or_default(),
            labels: run.labels.unwrap_or_default(),
            stop_signal: run.stop_signal.filter(|s| !s.is_empty()),
            os: c.os,
            architecture: c.architecture,
        },
        diff_ids: c.rootfs.diff_ids,
    })
}

fn hash_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Hashing::new(BufReader::with_capacity(256 * 1024, f));
    h.drain().map_err(|e| Error::io("reading", path, e))?;
    Ok(h.finish().0)
}

/// Lower directories of the overlay mounts this process can see.
fn mounted_lowerdirs() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in s.lines() {
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut parts = after.splitn(3, ' ');
        if parts.next() != Some("overlay") {
            continue;
        }
        let opts = parts.nth(1).unwrap_or("");
        for opt in opts.split(',') {
            if let Some(v) = opt
                .strip_prefix("lowerdir=")
                .or_else(|| opt.strip_prefix("lowerdir+="))
            {
                out.extend(v.split(':').map(|p| PathBuf::from(unescape_mountinfo(p))));
            }
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
