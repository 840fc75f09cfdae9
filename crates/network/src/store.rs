//! The sandbox records on disk: one small JSON file per sandbox (its address, host-side veth and
//! namespace file), written atomically, in a state directory that one process at a time owns.
//!
//! A record is written before anything is built and deleted after everything is torn down, so
//! after a crash every kernel object skiff made is either named by a record or an orphan that
//! reconciliation removes. An address is allocated exactly while a record holds it.
//!
//! Writes are atomic (a temporary file renamed into place) but not fsynced. A record describes
//! kernel state (namespaces, links) that a reboot wipes out: after an agent crash the page cache
//! still holds every renamed record, and after a power loss a record that was lost or torn names
//! a sandbox that is gone anyway, which reconciliation then removes. Syncing would buy nothing
//! and cost about 5 ms per setup (two fsyncs), half of the setup's latency here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network state directory {dir} is in use by another process")]
    Busy { dir: PathBuf },
    #[error("network state {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What is recorded about one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    pub id: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub netns: PathBuf,
}

/// A record file that could not be read back; its sandbox is torn down by id.
#[derive(Debug)]
pub struct Unreadable {
    pub id: String,
    pub problem: String,
}

pub struct Store {
    records: PathBuf,
    last: PathBuf,
    _lock: Flock<File>,
}

const RECORD_SUFFIX: &str = ".json";

impl Store {
    /// Opens (creating) the state directory and takes its lock for as long as the store lives;
    /// a second process, or a second store in this one, gets [`Error::Busy`].
    pub fn open(dir: &Path) -> Result<Store> {
        let records = dir.join("sandboxes");
        fs::create_dir_all(&records).map_err(io_err(&records, "creating the directory"))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening the lock file"))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Busy {
                    dir: dir.to_owned(),
                });
            }
            Err((_, e)) => return Err(io_err(&lock_path, "locking it")(e.into())),
        };
        let store = Store {
            last: dir.join("last-reserved"),
            records,
            _lock: lock,
        };
        store.remove_temporaries()?;
        Ok(store)
    }

    /// Temporary files are named with a leading dot; one left behind was never renamed into
    /// place, so it records nothing.
    fn remove_temporaries(&self) -> Result<()> {
        for dir in [&self.records, self.last.parent().unwrap_or(Path::new("."))] {
            for entry in fs::read_dir(dir).map_err(io_err(dir, "listing it"))? {
                let entry = entry.map_err(io_err(dir, "listing it"))?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io_err(&path, "removing a stale temporary"))?;
                }
            }
        }
        Ok(())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.records.join(format!("{id}{RECORD_SUFFIX}"))
    }

    /// Every record, and every record file that could not be read back.
    pub fn load(&self) -> Result<(Vec<Record>, Vec<Unreadable>)> {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        let dir = &self.records;
        for entry in fs::read_dir(dir).map_err(io_err(dir, "listing it"))? {
            let entry = entry.map_err(io_err(dir, "listing it"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(RECORD_SUFFIX) else {
                continue;
            };
            let id = id.to_owned();
            let parsed = fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(record) if record.id == id => good.push(record),
                Ok(record) => {
                    let problem = format!("the file holds the record of {:?}", record.id);
                    bad.push(Unreadable { id, problem });
                }
                Err(problem) => bad.push(Unreadable { id, problem }),
            }
        }
        good.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((good, bad))
    }

    /// Writes a record: once this returns, the address is allocated across agent crashes.
    pub fn save(&self, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
            path: self.record_path(&record.id),
            what: "encoding it",
            source: io::Error::other(e),
        })?;
        write_atomic(&self.record_path(&record.id), &bytes)
    }

    /// Deletes a record (a missing one is fine).
    pub fn remove(&self, id: &str) -> Result<()> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "deleting it")(e)),
        }
    }

    /// The round-robin position saved by [`Store::save_last_reserved`], if readable.
    pub fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(&self.last).ok()?.trim().parse().ok()
    }

    /// Saves the round-robin position. A hint only: losing it costs nothing but reusing an
    /// address sooner.
    pub fn save_last_reserved(&self, ip: Ipv4Addr) -> Result<()> {
        write_atomic(&self.last, format!("{ip}\n").as_bytes())
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place, so readers see
/// the old content or the new, never a part (see the module docs on syncing).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, "writing it")(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ip: [u8; 4]) -> Record {
        Record {
            id: id.into(),
            ip: Ipv4Addr::from(ip),
            host_veth: format!("veth{id}"),
            netns: PathBuf::from(format!("/run/skiff/netns/{id}")),
        }
    }

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (record("a", [10, 42, 0, 2]), record("b", [10, 42, 0, 3]));
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        assert_eq!(store.load().unwrap().0, vec![a.clone(), b.clone()]);
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert_eq!(store.load().unwrap().0, vec![b]);
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(err.to_string().contains("in use by another process"));
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn unreadable_and_misnamed_records_are_reported_and_temporaries_removed() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("sandboxes");
        fs::create_dir_all(&records).unwrap();
        fs::write(records.join("torn.json"), b"{\"id\": \"torn\", \"ip\"").unwrap();
        let misnamed = serde_json::to_vec(&record("other", [10, 42, 0, 4])).unwrap();
        fs::write(records.join("misnamed.json"), misnamed).unwrap();
        fs::write(records.join(".x.json.1.1.tmp"), b"partial").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (good, bad) = store.load().unwrap();
        assert!(good.is_empty());
        let mut ids: Vec<_> = bad.iter().map(|u| u.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["misnamed", "torn"]);
        assert!(!records.join(".x.json.1.1.tmp").exists());
    }

    #[test]
    fn the_last_reserved_hint_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_reserved(), None);
        store
            .save_last_reserved(Ipv4Addr::new(10, 42, 0, 7))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_reserved(), Some(Ipv4Addr::new(10, 42, 0, 7)));
    }
}
