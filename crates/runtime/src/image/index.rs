//! The image index (`content/index.json`) and the flock-based locks that let the CLI and a
//! running agent share one agent directory.
//!
//! Locks (all `flock`, so they also exclude threads of one process that open the file anew):
//! - `content/index.lock`, exclusive: one read-modify-write of the index at a time. Readers take
//!   no lock: the index is replaced by rename, so a reader sees the old or the new file whole.
//! - `content/content.lock`: imports and pulls hold it shared for their whole run; deleting
//!   layers and blobs (gc, rm) needs it exclusive, so nothing an import is about to reference
//!   can vanish under it.
//! - `layers/<hex>.lock`, exclusive: one unpack of a layer at a time; a second importer of the
//!   same layer waits and then finds it complete.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    /// Tarballs seen in the drop folder, by SHA-256 of their content.
    #[serde(default)]
    pub dropped: BTreeMap<String, DropRecord>,
    /// Stat of each drop-folder file when it was last hashed, so unchanged files are not read
    /// again on every scan.
    #[serde(default)]
    pub drop_stat: BTreeMap<String, DropStat>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Normalized `domain/path:tag` names pointing at this image; may be empty.
    #[serde(default)]
    pub names: Vec<String>,
    /// Repositories it was pulled from or imported as (for `repo@digest` lookups).
    #[serde(default)]
    pub repos: Vec<String>,
    pub manifest_digest: String,
    /// Uncompressed layer digests, bottom layer first.
    pub diff_ids: Vec<String>,
    /// Bytes of file data in its layers (shared layers counted in each image).
    pub size: u64,
    #[serde(default)]
    pub pinned: bool,
    /// Unix seconds when it was first imported or pulled.
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRecord {
    pub file: String,
    pub ids: Vec<String>,
    /// Set when the import failed; the file is not retried until its content changes.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub sha256: String,
}

/// Identity of an index file version: a rename gives a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

pub fn stamp(path: &Path) -> Result<Option<Stamp>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            size: m.len(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("inspecting", path, e)),
    }
}

/// Reads the index; a missing file is an empty index.
pub fn read(path: &Path) -> Result<Index> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Invalid {
            input: path.display().to_string(),
            reason: format!("corrupt image index: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Writes `data` to `path` atomically: a temp file in the same directory, fsynced, renamed over
/// `path`, then the directory fsynced.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temp file in", dir, e))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io("writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into place", path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

/// A held flock; released when dropped.
pub struct Lock {
    _file: File,
}

#[derive(Clone, Copy)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Lock {
    pub fn acquire(path: &Path, mode: Mode) -> Result<Lock> {
        let file = open_lock_file(path)?;
        let op = match mode {
            Mode::Shared => FlockOperation::LockShared,
            Mode::Exclusive => FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&file, op).map_err(|e| Error::io("locking", path, e.into()))?;
        Ok(Lock { _file: file })
    }

    /// `None` when someone else holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let file = open_lock_file(path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io("locking", path, e.into())),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening lock", path, e))
}

/// Paths of the agent directory's parts.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn drop_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn content(&self) -> PathBuf {
        self.root.join("content")
    }
    pub fn blobs(&self) -> PathBuf {
        self.content().join("blobs").join("sha256")
    }
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.blobs()
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }
    pub fn index(&self) -> PathBuf {
        self.content().join("index.json")
    }
    pub fn index_lock(&self) -> PathBuf {
        self.content().join("index.lock")
    }
    pub fn content_lock(&self) -> PathBuf {
        self.content().join("content.lock")
    }
    pub fn tmp(&self) -> PathBuf {
        self.content().join("tmp")
    }
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// `layers/<hex>`; the unpacked tree is its `fs`, complete when `complete` exists.
    pub fn layer(&self, diff_id: &str) -> PathBuf {
        self.layers()
            .join(diff_id.strip_prefix("sha256:").unwrap_or(diff_id))
    }
    pub fn layer_lock(&self, diff_id: &str) -> PathBuf {
        self.layers().join(format!(
            "{}.lock",
            diff_id.strip_prefix("sha256:").unwrap_or(diff_id)
        ))
    }
}
