//! Network namespaces kept alive as files, the way `ip netns` keeps them: creating one, removing
//! it, and running code or opening sockets inside one.
//!
//! A namespace is entered on a fresh thread that exits when its work is done: `setns` and
//! `unshare` change only the calling thread, and a pooled thread (tokio's workers or its blocking
//! pool) left inside a pod's namespace would silently run unrelated work there. Sockets keep the
//! namespace they were created in, so a socket made on such a thread can be handed to tokio.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use tokio::net::{TcpSocket, TcpStream};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating network namespace {path}: {what}: {source}")]
    Create {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("removing network namespace {path}: {what}: {source}")]
    Remove {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("preparing network namespace directory {path}: {what}: {source}")]
    Dir {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting a thread for network namespace {path}: {source}")]
    Thread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the work run in network namespace {path} panicked")]
    Panicked { path: PathBuf },
    #[error("connecting to {addr} from network namespace {path}: {source}")]
    Connect {
        path: PathBuf,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} from network namespace {path}: no answer within {timeout:?}")]
    ConnectTimeout {
        path: PathBuf,
        addr: SocketAddr,
        timeout: Duration,
    },
}

/// Whether `path` is a namespace file (a bind mount of an nsfs inode), not just a plain file
/// left behind by a crash between creating the file and mounting onto it.
pub fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Makes `dir` a shared mount point, as `ip netns add` does for `/run/netns`: a namespace file
/// mounted below it then propagates to mount namespaces created later (containers), so that
/// unmounting it here unmounts their copies too and the namespace can be freed. Idempotent: an
/// existing mount point is only marked shared again, never stacked.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    let err = |what, source: io::Error| Error::Dir {
        path: dir.to_owned(),
        what,
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| err("creating it", e))?;
    let mut bound = false;
    loop {
        let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
        match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself once, then share that.
            Err(Errno::EINVAL) if !bound => {
                let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
                mount(Some(dir), dir, None::<&str>, bind, None::<&str>)
                    .map_err(|e| err("bind-mounting it onto itself", e.into()))?;
                bound = true;
            }
            Err(e) => return Err(err("making it a shared mount", e.into())),
        }
    }
}

/// Undoes [`prepare_dir`] once the directory holds no namespace: unmounts it and removes it if
/// empty. A directory that still has entries, or is not a mount point, is left as it is.
pub fn release_dir(dir: &Path) -> Result<()> {
    let err = |what, source: io::Error| Error::Dir {
        path: dir.to_owned(),
        what,
        source,
    };
    match fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("reading it", e)),
    }
    match umount2(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(err("unmounting it", e.into())),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(Errno::ENOTEMPTY as i32) => Ok(()),
        Err(e) => Err(err("removing it", e)),
    }
}

/// Creates a new, empty network namespace (only `lo`, down) kept alive by a bind mount on
/// `path`, like `ip netns add`. Idempotent: an existing namespace file is kept, and an empty
/// file left by a crash before the mount is reused.
pub fn create(path: &Path) -> Result<()> {
    if is_netns(path) {
        return Ok(());
    }
    let err = |what, source: io::Error| Error::Create {
        path: path.to_owned(),
        what,
        source,
    };
    let existed = path.exists();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map_err(|e| err("creating the file", e))?;
    let target = path.to_owned();
    let mounted = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            let source = "/proc/thread-self/ns/net";
            mount(
                Some(source),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .map_err(|source| Error::Thread {
            path: path.to_owned(),
            source,
        })?
        .join()
        .map_err(|_| Error::Panicked {
            path: path.to_owned(),
        })?;
    if let Err(e) = mounted {
        if !existed {
            let _ = fs::remove_file(path);
        }
        return Err(err("unsharing and bind-mounting it", e));
    }
    Ok(())
}

/// Unmounts and deletes a namespace file, like `ip netns delete`. The namespace itself goes
/// away when nothing else (a process, an open file, another mount) holds it. Idempotent.
pub fn remove(path: &Path) -> Result<()> {
    let err = |what, source: io::Error| Error::Remove {
        path: path.to_owned(),
        what,
        source,
    };
    // A file mounted over twice (by hand, or by another tool) needs one unmount per mount.
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => return Err(err("unmounting it", e.into())),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("deleting the file", e)),
    }
}

fn open(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

fn enter(file: &File, path: &Path) -> Result<()> {
    match setns(file, CloneFlags::CLONE_NEWNET) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => Err(Error::NotNetns {
            path: path.to_owned(),
        }),
        Err(e) => Err(Error::Enter {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns`, and waits
/// for it. Blocks the caller: from async code use [`run_in_async`].
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = open(netns)?;
    let path = netns.to_owned();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T> {
            enter(&file, &path)?;
            Ok(f())
        })
        .map_err(|source| Error::Thread {
            path: netns.to_owned(),
            source,
        })?
        .join()
        .map_err(|_| Error::Panicked {
            path: netns.to_owned(),
        })?
}

/// [`run_in`] for async callers: the fresh thread runs while the task awaits its result. If the
/// future is dropped, the thread still finishes `f` and its result is discarded.
pub async fn run_in_async<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = open(netns)?;
    let path = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let result = enter(&file, &path).map(|()| f());
            let _ = tx.send(result);
        })
        .map_err(|source| Error::Thread {
            path: netns.to_owned(),
            source,
        })?;
    // The sender is dropped unsent only if `f` panicked.
    rx.await.map_err(|_| Error::Panicked {
        path: netns.to_owned(),
    })?
}

/// Opens a TCP connection to `addr` from inside the network namespace at `netns` (port-forward,
/// httpGet and tcpSocket probes). The socket is created on a thread inside the namespace, then
/// connected from the calling task, so waiting for the peer blocks no thread.
pub async fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let connect_err = |source| Error::Connect {
        path: netns.to_owned(),
        addr,
        source,
    };
    let socket = run_in_async(netns, move || match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    })
    .await?
    .map_err(connect_err)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(connect_err(e)),
        Err(_) => Err(Error::ConnectTimeout {
            path: netns.to_owned(),
            addr,
            timeout,
        }),
    }
}
