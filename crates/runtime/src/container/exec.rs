//! `exec`: one more process in a running container (`kubectl exec`, exec probes).
//!
//! The agent starts `skiff shim exec <dir>` with its pipes as stdin/stdout/stderr and one end
//! of a socketpair as fd 3. The exec shim (single-threaded, like the container shim) reads the
//! request from fd 3, creates the process with the container's process settings (user,
//! capabilities, no_new_privs, seccomp) and the request's args/env/cwd, passes its own stdio
//! to it (or asks for a pty and sends the master back over fd 3), then reports the exit code.
//! Messages on fd 3 are JSON lines: request `ExecSpec`; replies `Started`, `Failed`, `Exited`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, ready};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::backend::{self, Io};
use super::files::{self, ContainerConfig, Paths};
use super::{Error, Result, User};

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// `NAME=value`, added to (and overriding) the container's environment.
    pub env: Vec<String>,
    /// Working directory; `None`: the container's.
    pub cwd: Option<String>,
    /// `None`: the container's user.
    pub user: Option<User>,
    pub tty: bool,
    /// Give the process a stdin to write to (otherwise it reads /dev/null).
    pub stdin: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// With a tty, the pty master comes with this message (SCM_RIGHTS).
    Started {
        pid: i32,
    },
    Failed {
        message: String,
    },
    Exited {
        code: i32,
    },
}

/// `skiff shim exec <dir>`.
pub(crate) fn exec_shim(dir: &Path) -> ExitCode {
    if super::sys::thread_count().ok() != Some(1) {
        eprintln!("skiff shim exec: must start single-threaded");
        return ExitCode::FAILURE;
    }
    // fd 3 must be the agent's socket; anything else means we were started by hand.
    let is_socket = nix::sys::stat::fstat(3)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false);
    if !is_socket {
        eprintln!("skiff shim exec: fd 3 is not the agent's control socket");
        return ExitCode::from(2);
    }
    #[allow(unsafe_code)]
    // SAFETY: fd 3 is open (fstat succeeded) and nothing else in this process owns it.
    let control = UnixStream::from(unsafe { OwnedFd::from_raw_fd(3) });
    let _ = nix::sys::prctl::set_child_subreaper(true);
    match run(dir, &control) {
        Ok(code) => {
            let _ = reply(&control, &Reply::Exited { code }, None);
            ExitCode::SUCCESS
        }
        Err(message) => {
            let _ = reply(&control, &Reply::Failed { message }, None);
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, control: &UnixStream) -> Result<i32, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = control;
    while reader
        .read(&mut byte)
        .map_err(|e| format!("reading the request: {e}"))?
        == 1
    {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 1 << 20 {
            return Err("exec request too large".into());
        }
    }
    let req: ExecSpec =
        serde_json::from_slice(&line).map_err(|e| format!("bad exec request: {e}"))?;
    std::env::set_current_dir(dir).map_err(|e| format!("entering {}: {e}", dir.display()))?;
    let paths = Paths::new(dir);
    let cfg = files::read_json::<ContainerConfig>(&paths.config())
        .map_err(|e| e.to_string())?
        .ok_or("container.json is missing")?;
    let oci: serde_json::Value = serde_json::from_slice(
        &fs::read(paths.oci_config()).map_err(|e| format!("reading config.json: {e}"))?,
    )
    .map_err(|e| format!("parsing config.json: {e}"))?;
    let seccomp = match oci["linux"].get("seccomp") {
        Some(s) => Some(serde_json::from_value(s.clone()).map_err(|e| e.to_string())?),
        None => None,
    };
    let process = process_json(&oci["process"], &req, seccomp.is_some());

    let me = std::process::id();
    let process_path = paths.dir.join(format!("exec-{me}.json"));
    fs::write(
        &process_path,
        serde_json::to_vec(&process).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("writing {}: {e}", process_path.display()))?;
    let console_name = format!("exec-{me}.sock");
    let console = if req.tty {
        let _ = fs::remove_file(&console_name);
        Some(UnixListener::bind(&console_name).map_err(|e| format!("console socket: {e}"))?)
    } else {
        None
    };
    let io = match &console {
        Some(_) => Io::Console(paths.dir.join(&console_name)),
        None => {
            let dup = |fd: i32| {
                nix::unistd::dup(fd)
                    .map(|d| {
                        #[allow(unsafe_code)]
                        // SAFETY: dup returned a new descriptor that only we own.
                        unsafe {
                            OwnedFd::from_raw_fd(d)
                        }
                    })
                    .map_err(|e| format!("dup {fd}: {e}"))
            };
            Io::Pipes {
                stdin: dup(0)?,
                stdout: dup(1)?,
                stderr: dup(2)?,
            }
        }
    };
    let result = backend::exec(&cfg.kind, &cfg.spec.id, &paths, &process_path, seccomp, io);
    let _ = fs::remove_file(&process_path);
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            let _ = fs::remove_file(&console_name);
            return Err(e);
        }
    };
    let master = match &console {
        Some(listener) => {
            let m = super::shim::receive_master(listener);
            let _ = fs::remove_file(&console_name);
            Some(m?)
        }
        None => None,
    };
    reply(
        control,
        &Reply::Started { pid },
        master.as_ref().map(|m| m.as_raw_fd()),
    )
    .map_err(|e| format!("reporting the start: {e}"))?;
    drop(master);
    // Our copies of the agent's pipes must go, or the agent never sees EOF on them.
    if let Ok(null) = fs::File::open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for pid {pid}: {e}")),
        }
    }
}

/// The container's `process` with the request's command: user, capabilities, rlimits and
/// no_new_privs stay the container's (like `runc exec`). With a seccomp profile,
/// no_new_privs is forced: the exec shim loads the filter after capabilities are dropped,
/// which the kernel allows only then.
fn process_json(template: &serde_json::Value, req: &ExecSpec, seccomp: bool) -> serde_json::Value {
    let mut p = template.clone();
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    p["args"] = serde_json::json!(req.args);
    p["env"] = serde_json::json!(env);
    p["terminal"] = serde_json::json!(req.tty);
    if let Some(cwd) = &req.cwd {
        p["cwd"] = serde_json::json!(cwd);
    }
    if let Some(u) = &req.user {
        p["user"] =
            serde_json::json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
    }
    if seccomp {
        p["noNewPrivileges"] = serde_json::json!(true);
    }
    p
}

fn reply(control: &UnixStream, r: &Reply, fd: Option<i32>) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<i32> = fd.into_iter().collect();
    let mut sent = super::sys::send_with_fds(control.as_fd(), &line, &fds)?;
    let mut w = control;
    while sent < line.len() {
        sent += w.write(&line[sent..])?;
    }
    Ok(())
}

/// A running exec'd process, as seen by the agent.
pub struct ExecProcess {
    pub pid: i32,
    /// Without a tty: the process's stdin (if asked for), stdout and stderr.
    pub stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    /// With a tty: the terminal (read output, write input, resize).
    pub pty: Option<Pty>,
    control: tokio::net::UnixStream,
    pending: Vec<u8>,
    /// Set once the exit is known: the pid may be reused after that.
    exited: bool,
    child: tokio::process::Child,
    id: String,
}

impl ExecProcess {
    /// Resizes the process's terminal; an error without a tty.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        match &self.pty {
            Some(p) => p.resize(cols, rows),
            None => Err(Error::Exec {
                id: self.id.clone(),
                message: "the process has no terminal to resize".into(),
            }),
        }
    }

    /// Signals the process (e.g. when an exec probe times out). Until `wait` has returned,
    /// the pid is still this process: the exec shim reaps it only then.
    pub fn kill(&self, signal: super::Signal) -> Result<()> {
        if self.exited {
            return Ok(());
        }
        match nix::sys::signal::kill(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(super::io_err(format!("signalling exec'd pid {}", self.pid))(e.into())),
        }
    }

    /// Waits for the process to exit: its exit code (128 + n for signal n).
    pub async fn wait(&mut self) -> Result<i32> {
        use tokio::io::AsyncReadExt;
        let err = |message: String| Error::Exec {
            id: self.id.clone(),
            message,
        };
        loop {
            if let Some(reply) = take_line(&mut self.pending) {
                match serde_json::from_slice::<Reply>(&reply) {
                    Ok(Reply::Exited { code }) => {
                        self.exited = true;
                        let _ = self.child.wait().await;
                        return Ok(code);
                    }
                    Ok(Reply::Failed { message }) => return Err(err(message)),
                    Ok(Reply::Started { .. }) => continue,
                    Err(e) => return Err(err(format!("bad reply from the exec shim: {e}"))),
                }
            }
            let mut buf = [0u8; 1024];
            let n = self
                .control
                .read(&mut buf)
                .await
                .map_err(|e| err(format!("reading from the exec shim: {e}")))?;
            if n == 0 {
                let status = self.child.wait().await;
                return Err(err(format!(
                    "the exec shim exited without reporting an exit code ({status:?})"
                )));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let i = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=i).collect();
    line.pop();
    Some(line)
}

/// Starts the exec shim for container `id` in `dir` (agent side).
pub(crate) async fn spawn(
    id: &str,
    dir: &Path,
    shim: &super::ShimCommand,
    spec: &ExecSpec,
) -> Result<ExecProcess> {
    use std::process::Stdio;
    let exec_err = |message: String| Error::Exec {
        id: id.to_string(),
        message,
    };
    if spec.args.is_empty() {
        return Err(exec_err("no command".into()));
    }
    let (ours, theirs) = UnixStream::pair().map_err(super::io_err("creating a socketpair"))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&shim.program);
    cmd.args(&shim.args)
        .arg("exec")
        .arg(dir)
        .stdin(if spec.stdin && !spec.tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if spec.tty {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(if spec.tty {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls dup2/fcntl,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_fd == 3 {
                // Already in place: clear close-on-exec instead.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        exec_err(format!(
            "running the exec shim {}: {e}",
            shim.program.display()
        ))
    })?;
    drop(theirs);
    ours.set_nonblocking(true)
        .map_err(super::io_err("exec control socket"))?;
    let mut control =
        tokio::net::UnixStream::from_std(ours).map_err(super::io_err("exec control socket"))?;
    let mut request = serde_json::to_vec(spec).map_err(|e| exec_err(e.to_string()))?;
    request.push(b'\n');
    tokio::io::AsyncWriteExt::write_all(&mut control, &request)
        .await
        .map_err(|e| exec_err(format!("writing the request: {e}")))?;
    // The first reply, with the pty master if any.
    let mut pending = Vec::new();
    let mut fds = Vec::new();
    let first = loop {
        if let Some(line) = take_line(&mut pending) {
            break line;
        }
        let mut buf = [0u8; 4096];
        let (n, got) = control
            .async_io(tokio::io::Interest::READABLE, || {
                super::sys::recv_with_fds(control.as_fd(), &mut buf)
            })
            .await
            .map_err(|e| exec_err(format!("reading from the exec shim: {e}")))?;
        fds.extend(got);
        if n == 0 {
            let status = child.wait().await;
            return Err(exec_err(format!(
                "the exec shim exited before starting the process ({status:?})"
            )));
        }
        pending.extend_from_slice(&buf[..n]);
    };
    let pid = match serde_json::from_slice::<Reply>(&first) {
        Ok(Reply::Started { pid }) => pid,
        Ok(Reply::Failed { message }) => {
            let _ = child.wait().await;
            return Err(exec_err(message));
        }
        Ok(Reply::Exited { .. }) => return Err(exec_err("the exec shim exited early".into())),
        Err(e) => return Err(exec_err(format!("bad reply from the exec shim: {e}"))),
    };
    let pty = if spec.tty {
        let master = fds
            .into_iter()
            .next()
            .ok_or_else(|| exec_err("the exec shim sent no terminal".into()))?;
        Some(Pty::new(master).map_err(super::io_err("pty master"))?)
    } else {
        None
    };
    Ok(ExecProcess {
        pid,
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        pty,
        control,
        pending,
        exited: false,
        child,
        id: id.to_string(),
    })
}

/// A pty master: read the terminal's output, write its input, resize it.
pub struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    pub(crate) fn new(master: OwnedFd) -> io::Result<Pty> {
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        #[allow(unsafe_code)]
        // SAFETY: an OwnedFd is open for as long as it is owned and always returns the same fd.
        let fd =
            unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Pty { fd })
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        super::sys::set_winsize(self.fd.get_ref().as_fd(), cols, rows).map_err(super::io_err(
            format!("resizing the terminal to {cols}x{rows}"),
        ))
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave is closed, the process is gone: end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_process_keeps_the_containers_settings() {
        let template = json!({
            "user": {"uid": 1000, "gid": 1000},
            "args": ["sleep", "1000"],
            "env": ["PATH=/bin", "A=1"],
            "cwd": "/work",
            "capabilities": {"bounding": ["CAP_KILL"]},
        });
        let req = ExecSpec {
            args: vec!["id".into()],
            env: vec!["A=2".into(), "B=3".into()],
            tty: true,
            ..Default::default()
        };
        let p = process_json(&template, &req, true);
        assert_eq!(p["args"], json!(["id"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["terminal"], true);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL"]));
    }
}
