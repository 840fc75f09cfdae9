//! Small OS helpers shared by the agent side and the shims: process identity that survives pid
//! reuse, pidfds, unix socket paths longer than `sun_path`, atomic file writes.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A process identified by pid and start time (`/proc/<pid>/stat` field 22), so a recycled
/// pid is never mistaken for the process we recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcId {
    pub pid: i32,
    pub start_ticks: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> io::Result<ProcId> {
        let (start_ticks, _) = stat(pid)?;
        Ok(ProcId { pid, start_ticks })
    }

    /// True while the process exists and has not exited (zombies count as exited).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Ok((ticks, state)) if ticks == self.start_ticks && state != 'Z' && state != 'X')
    }
}

/// Start time in clock ticks and state letter of a process.
fn stat(pid: i32) -> io::Result<(u64, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after it start
    // after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other(format!("malformed /proc/{pid}/stat")))?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| io::Error::other(format!("malformed /proc/{pid}/stat")))?;
    // Field 3 is the state; the start time is field 22, i.e. 19 fields further.
    let ticks = fields
        .nth(18)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("malformed /proc/{pid}/stat")))?;
    Ok((ticks, state))
}

/// A pidfd for `id`, checked to refer to that very process (not a successor with its pid).
/// It becomes readable when the process exits, for the agent to await without a thread.
pub(crate) fn pidfd_open(id: ProcId) -> io::Result<Option<OwnedFd>> {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id.pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    #[allow(unsafe_code)]
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Opened after the check could have raced with pid reuse: verify it is still ours.
    if id.alive() { Ok(Some(fd)) } else { Ok(None) }
}

/// Longest path that fits in `sockaddr_un.sun_path` with its NUL.
const SUN_PATH_MAX: usize = 107;

/// A path to connect to or bind `path` even when it is longer than `sun_path`: the directory is
/// opened and reached through `/proc/self/fd/<n>/`; keep the returned fd open while using it.
pub(crate) fn short_socket_path(path: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(io::Error::other(format!(
                "bad socket path {}",
                path.display()
            )));
        }
    };
    let fd: OwnedFd = fs::File::open(dir)?.into();
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .join(name);
    if short.as_os_str().len() > SUN_PATH_MAX {
        return Err(io::Error::other(format!(
            "socket name too long: {}",
            path.display()
        )));
    }
    Ok((short, Some(fd)))
}

/// Writes `data` to `path` so readers see the old content or the new, never a torn file.
/// Not fsynced: these records must survive the agent, not the machine (after a reboot the
/// containers they describe are gone anyway).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::File::create(&tmp)?.write_all(data)?;
    fs::rename(&tmp, path)
}

pub(crate) fn to_unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn from_unix_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Number of threads of this process; the shims refuse to fork when it is not 1.
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads line in /proc/self/status"))
}

/// Sets a terminal's window size (TIOCSWINSZ), e.g. on a pty master.
pub(crate) fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which outlives the call; an
    // fd that is not a terminal makes the call fail with ENOTTY, nothing else.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TIOCSWINSZ,
            &ws as *const libc::winsize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message and the file descriptors passed with it (SCM_RIGHTS).
pub(crate) fn recv_with_fds(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for r in raw {
                #[allow(unsafe_code)]
                // SAFETY: the kernel installed these descriptors in this process for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends `data` with `fds` attached (SCM_RIGHTS).
pub(crate) fn send_with_fds(
    fd: std::os::fd::BorrowedFd<'_>,
    data: &[u8],
    fds: &[std::os::fd::RawFd],
) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let iov = [io::IoSlice::new(data)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(pidfd_open(me).unwrap().is_some());
        assert!(pidfd_open(other).unwrap().is_none());
    }

    #[test]
    fn long_socket_paths_go_through_proc_self_fd() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        fs::create_dir(&deep).unwrap();
        let (p, fd) = short_socket_path(&deep.join("attach.sock")).unwrap();
        assert!(fd.is_some());
        assert!(p.starts_with("/proc/self/fd/"));
        let listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&p).unwrap();
        drop(listener);
        assert!(deep.join("attach.sock").exists());
    }
}
