//! The per-container shim (`skiff shim start <dir>`): a small single-threaded process, like
//! conmon. The launcher forks the shim proper and exits once it reports the container started
//! (or why it did not), so the agent never has to reap the shim and the shim is re-parented to
//! init: it survives the agent. The shim mounts the rootfs, writes the bundle, creates and
//! starts the container, then runs one `poll` loop: container output to the CRI log and to
//! attached clients, client input to the container's stdin, resizes to its pty, SIGCHLD
//! (signalfd) to reap it. When the container exits it records the exit and quits.
//!
//! Attach protocol on `attach.sock` (client first sends one byte: `a` attach, `i` attach with
//! stdin, `w` wait). Frames both ways are `[kind u8][len u32 BE][payload]`: client to shim
//! STDIN (0), STDIN_CLOSE (1), RESIZE (2, cols u16 BE + rows u16 BE); shim to client STDOUT
//! (1), STDERR (2). The shim closes every connection once the exit is recorded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::backend::{self, Io};
use super::cgroup::Hierarchies;
use super::files::{self, ContainerConfig, EXIT_NOT_STARTED, ExitRecord, Paths, StartedRecord};
use super::logs::{LogStream, LogWriter};
use super::sys::{self, ProcId};
use super::{ContainerSpec, spec};

pub(crate) const HELLO_ATTACH: u8 = b'a';
pub(crate) const HELLO_ATTACH_STDIN: u8 = b'i';
pub(crate) const HELLO_WAIT: u8 = b'w';
pub(crate) const FRAME_STDIN: u8 = 0;
pub(crate) const FRAME_STDIN_CLOSE: u8 = 1;
pub(crate) const FRAME_RESIZE: u8 = 2;
pub(crate) const FRAME_STDOUT: u8 = 1;
pub(crate) const FRAME_STDERR: u8 = 2;
/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// How long output is still collected after the container's init exited.
const DRAIN: Duration = Duration::from_secs(2);
/// Bytes queued for one attach client before it is dropped as too slow.
const CLIENT_BACKLOG: usize = 4 << 20;
/// Bytes of stdin buffered before clients stop being read (backpressure).
const STDIN_BACKLOG: usize = 1 << 20;
const CONSOLE_SOCK: &str = "console.sock";

/// What the launcher prints on stdout for the agent: one JSON object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    Started { pid: i32, started_at_ns: u64 },
    Failed { message: String },
}

/// `skiff shim start <dir>`.
pub(crate) fn launch(dir: &Path) -> ExitCode {
    match sys::thread_count() {
        Ok(1) => {}
        Ok(n) => {
            eprintln!("skiff shim: must start single-threaded, found {n} threads");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("skiff shim: counting threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (r, w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff shim: creating a pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[allow(unsafe_code)]
    // SAFETY: this process has exactly one thread (checked above), so the child may run any
    // code, allocations included.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => {
            drop(w);
            let mut report = Vec::new();
            let _ = File::from(r).read_to_end(&mut report);
            if report.is_empty() {
                report = serde_json::to_vec(&Report::Failed {
                    message: "the shim exited before reporting".into(),
                })
                .unwrap_or_default();
            }
            let mut out = io::stdout();
            let _ = out.write_all(&report).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Ok(ForkResult::Child) => {
            drop(r);
            std::process::exit(daemon(dir, w))
        }
        Err(e) => {
            eprintln!("skiff shim: fork: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shim proper. Returns its exit code.
fn daemon(dir: &Path, status: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let paths = Paths::new(dir);
    detach_stdio(&paths);
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut status = File::from(status);
    let report = |status: &mut File, r: &Report| {
        let _ = serde_json::to_writer(&mut *status, r);
    };
    let started = std::env::set_current_dir(dir)
        .map_err(|e| format!("entering {}: {e}", dir.display()))
        .and_then(|()| {
            let me = ProcId::of(std::process::id() as i32).map_err(|e| e.to_string())?;
            files::write_json(&paths.shim(), &me).map_err(|e| format!("writing shim.json: {e}"))?;
            let cfg = files::read_json::<ContainerConfig>(&paths.config())
                .map_err(|e| e.to_string())?
                .ok_or("container.json is missing")?;
            Shim::start(paths.clone(), cfg)
        });
    match started {
        Ok(mut shim) => {
            report(
                &mut status,
                &Report::Started {
                    pid: shim.pid.as_raw(),
                    started_at_ns: shim.started_at_ns,
                },
            );
            drop(status);
            // Continue in a fresh image of this binary: the pages youki touched (and its heap)
            // are not carried along, which keeps the long-lived shim small.
            let err = shim.reexec();
            eprintln!("re-executing as monitor failed, continuing in place: {err}");
            shim.run();
            0
        }
        Err(message) => {
            eprintln!("start failed: {message}");
            let exit = ExitRecord {
                code: EXIT_NOT_STARTED,
                signal: None,
                oom_killed: false,
                started_at_ns: None,
                finished_at_ns: sys::to_unix_nanos(SystemTime::now()),
                message: message.clone(),
            };
            let _ = files::write_json(&paths.exit(), &exit);
            report(&mut status, &Report::Failed { message });
            1
        }
    }
}

/// stdin and stdout to /dev/null (the agent's pipes must not stay open), stderr to shim.log.
fn detach_stdio(paths: &Paths) {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    if let Ok(log) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.shim_log())
    {
        let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
    }
}

/// What the starting shim hands to its re-executed self (`shim monitor <dir> <json>`): the
/// container's pid and the descriptors it holds, kept open across execve.
#[derive(Debug, Serialize, Deserialize)]
struct Handoff {
    pid: i32,
    started_at_ns: u64,
    out: Option<i32>,
    err: Option<i32>,
    stdin: Option<i32>,
    listener: i32,
}

/// `skiff shim monitor <dir> <handoff>`: the shim after re-exec. Never started by the agent.
pub(crate) fn monitor(dir: &Path, handoff: &str) -> ExitCode {
    match Shim::resume(dir, handoff) {
        Ok(mut shim) => {
            shim.reap();
            shim.run();
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Nobody would drain the container's output or record its exit: stop it and
            // say why, rather than leave it blocked on a full pipe.
            eprintln!("skiff shim monitor: {e}");
            give_up(dir, handoff, &e);
            ExitCode::FAILURE
        }
    }
}

fn give_up(dir: &Path, handoff: &str, why: &str) {
    let Ok(h) = serde_json::from_str::<Handoff>(handoff) else {
        return;
    };
    let pid = Pid::from_raw(h.pid);
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    let record = ExitRecord {
        code: files::EXIT_UNKNOWN,
        signal: Some(Signal::SIGKILL as i32),
        oom_killed: false,
        started_at_ns: Some(h.started_at_ns),
        finished_at_ns: sys::to_unix_nanos(SystemTime::now()),
        message: format!("the shim could not monitor the container: {why}"),
    };
    let _ = files::write_json(&Paths::new(dir).exit(), &record);
}

struct Shim {
    spec: ContainerSpec,
    pid: Pid,
    started_at_ns: u64,
    /// stdout pipe, or the pty master when the container has a terminal.
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    tty: bool,
    /// Container stdin (pipe write end); with a tty, input goes to the master (`out`).
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_closing: bool,
    listener: UnixListener,
    clients: Vec<Client>,
    sigfd: SignalFd,
    log: LogWriter,
    exit: Option<(WaitStatus, SystemTime)>,
    drain_until: Option<Instant>,
    cgroups: Hierarchies,
    paths: Paths,
    buf: Vec<u8>,
}

struct Client {
    stream: UnixStream,
    hello: Option<u8>,
    input: Vec<u8>,
    output: Vec<u8>,
    gone: bool,
}

#[derive(Clone, Copy)]
enum Token {
    Signal,
    Out,
    Err,
    Listener,
    Stdin,
    Client(usize),
}

impl Shim {
    fn start(paths: Paths, cfg: ContainerConfig) -> Result<Shim, String> {
        let spec = cfg.spec;
        let cgroups = Hierarchies::load().map_err(|e| format!("reading mountinfo: {e}"))?;
        super::rootfs::mount(&paths, &spec.layers)
            .map_err(|e| format!("mounting the rootfs: {e}"))?;
        let config = spec::oci_config(&spec, Path::new("rootfs"), cgroups.unified())?;
        fs::write(
            paths.oci_config(),
            serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("writing config.json: {e}"))?;
        let log = LogWriter::open(&spec.log_path, spec.log_rotation)
            .map_err(|e| format!("opening log {}: {e}", spec.log_path.display()))?;

        // SIGCHLD through a signalfd, blocked before any child exists so none is missed.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| format!("blocking SIGCHLD: {e}"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("creating a signalfd: {e}"))?;

        let _ = fs::remove_file(paths.attach_sock());
        let listener = UnixListener::bind(Paths::ATTACH_SOCK)
            .map_err(|e| format!("binding {}: {e}", paths.attach_sock().display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("attach socket: {e}"))?;

        let (io, out, err, stdin, console) = if spec.tty {
            let _ = fs::remove_file(CONSOLE_SOCK);
            let console = UnixListener::bind(CONSOLE_SOCK)
                .map_err(|e| format!("binding the console socket: {e}"))?;
            (
                Io::Console(paths.dir.join(CONSOLE_SOCK)),
                None,
                None,
                None,
                Some(console),
            )
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let (stdin_r, stdin_w) = if spec.stdin {
                let (r, w) = pipe()?;
                (r, Some(w))
            } else {
                let null =
                    File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
                (OwnedFd::from(null), None)
            };
            let io = Io::Pipes {
                stdin: stdin_r,
                stdout: out_w,
                stderr: err_w,
            };
            (io, Some(out_r), Some(err_r), stdin_w, None)
        };

        // The runtime creates the cgroup and its missing parents; `remove` of another container
        // must not delete one of those parents in between.
        let tree = super::cgroup::lock_tree(false);
        if let Err(e) = &tree {
            eprintln!("cgroup tree lock: {e}");
        }
        let pid = backend::create_and_start(&cfg.kind, &spec.id, &paths, io);
        drop(tree);
        let pid = pid?;
        let started_at = SystemTime::now();
        let pid = Pid::from_raw(pid);
        let out = match console {
            Some(console) => {
                let master = receive_master(&console)?;
                let _ = fs::remove_file(CONSOLE_SOCK);
                Some(master)
            }
            None => out,
        };
        for fd in [&out, &err, &stdin].into_iter().flatten() {
            set_nonblocking(fd.as_fd())?;
        }
        // Not reaped yet, so even a process that already exited still has its /proc entry.
        let process = ProcId::of(pid.as_raw()).map_err(|e| format!("reading pid {pid}: {e}"))?;
        let started_at_ns = sys::to_unix_nanos(started_at);
        files::write_json(
            &paths.started(),
            &StartedRecord {
                process,
                started_at_ns,
            },
        )
        .map_err(|e| format!("writing started.json: {e}"))?;
        Ok(Shim {
            tty: spec.tty,
            spec,
            pid,
            started_at_ns,
            out,
            err,
            stdin,
            stdin_buf: Vec::new(),
            stdin_closing: false,
            listener,
            clients: Vec::new(),
            sigfd,
            log,
            exit: None,
            drain_until: None,
            cgroups,
            paths,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Replaces this process image with `<this binary> <leading args> monitor <dir> <handoff>`.
    /// Returns only on failure. Children (the container) and pending signals survive execve.
    fn reexec(&self) -> String {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let fd = |f: &Option<OwnedFd>| f.as_ref().map(|f| f.as_raw_fd());
        let handoff = Handoff {
            pid: self.pid.as_raw(),
            started_at_ns: self.started_at_ns,
            out: fd(&self.out),
            err: fd(&self.err),
            stdin: fd(&self.stdin),
            listener: self.listener.as_raw_fd(),
        };
        for raw in [
            handoff.out,
            handoff.err,
            handoff.stdin,
            Some(handoff.listener),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = fcntl(raw, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
                return format!("keeping fd {raw} open: {e}");
            }
        }
        let handoff = match serde_json::to_string(&handoff) {
            Ok(h) => h,
            Err(e) => return e.to_string(),
        };
        // Our own argv ends with `start <dir>`; what precedes them (e.g. `shim`) is how this
        // binary dispatches to the shim.
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if argv.len() < 3 {
            return "unexpected argv".into();
        }
        let mut args: Vec<CString> = Vec::new();
        for a in argv[..argv.len() - 2].iter() {
            match CString::new(a.as_bytes()) {
                Ok(c) => args.push(c),
                Err(e) => return e.to_string(),
            }
        }
        for a in [
            "monitor".as_bytes(),
            self.paths.dir.as_os_str().as_bytes(),
            handoff.as_bytes(),
        ] {
            match CString::new(a) {
                Ok(c) => args.push(c),
                Err(e) => return e.to_string(),
            }
        }
        match nix::unistd::execv(c"/proc/self/exe", &args) {
            Ok(never) => match never {},
            Err(e) => format!("execv /proc/self/exe: {e}"),
        }
    }

    /// Rebuilds the shim in the re-executed image from the handoff.
    fn resume(dir: &Path, handoff: &str) -> Result<Shim, String> {
        let h: Handoff = serde_json::from_str(handoff).map_err(|e| format!("bad handoff: {e}"))?;
        std::env::set_current_dir(dir).map_err(|e| format!("entering {}: {e}", dir.display()))?;
        let paths = Paths::new(dir);
        let cfg = files::read_json::<ContainerConfig>(&paths.config())
            .map_err(|e| e.to_string())?
            .ok_or("container.json is missing")?;
        let spec = cfg.spec;
        let take = |raw: i32| -> Result<OwnedFd, String> {
            // Only descriptors that are open, i.e. the ones our previous image left us.
            fcntl(raw, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
                .map_err(|e| format!("handed-off fd {raw}: {e}"))?;
            #[allow(unsafe_code)]
            // SAFETY: the previous image of this process kept `raw` open for us (checked just
            // above) and nothing else in this image owns it.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        };
        let out = h.out.map(take).transpose()?;
        let err = h.err.map(take).transpose()?;
        let stdin = h.stdin.map(take).transpose()?;
        let listener = UnixListener::from(take(h.listener)?);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| format!("blocking SIGCHLD: {e}"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("creating a signalfd: {e}"))?;
        let log = LogWriter::open(&spec.log_path, spec.log_rotation)
            .map_err(|e| format!("opening log {}: {e}", spec.log_path.display()))?;
        let cgroups = Hierarchies::load().map_err(|e| format!("reading mountinfo: {e}"))?;
        Ok(Shim {
            tty: spec.tty,
            spec,
            pid: Pid::from_raw(h.pid),
            started_at_ns: h.started_at_ns,
            out,
            err,
            stdin,
            stdin_buf: Vec::new(),
            stdin_closing: false,
            listener,
            clients: Vec::new(),
            sigfd,
            log,
            exit: None,
            drain_until: None,
            cgroups,
            paths,
            buf: vec![0; 64 * 1024],
        })
    }

    fn run(&mut self) {
        loop {
            if self.exit.is_some()
                && ((self.out.is_none() && self.err.is_none())
                    || self.drain_until.is_some_and(|d| Instant::now() >= d))
            {
                break;
            }
            let (tokens, mut fds) = self.poll_set();
            let timeout = match self.drain_until {
                Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready: Vec<(Token, PollFlags)> = tokens
                .into_iter()
                .zip(
                    fds.iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty())),
                )
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);
            for (token, revents) in ready {
                self.handle(token, revents);
            }
            self.clients.retain(|c| !c.gone);
        }
        self.finish();
    }

    fn poll_set(&self) -> (Vec<Token>, Vec<PollFd<'_>>) {
        let mut tokens = vec![Token::Signal, Token::Listener];
        let mut fds = vec![
            PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        let want_out_write = self.tty && !self.stdin_buf.is_empty();
        if let Some(out) = &self.out {
            let mut flags = PollFlags::POLLIN;
            if want_out_write {
                flags |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Out);
            fds.push(PollFd::new(out.as_fd(), flags));
        }
        if let Some(err) = &self.err {
            tokens.push(Token::Err);
            fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
        }
        if let Some(stdin) = &self.stdin
            && !self.stdin_buf.is_empty()
        {
            tokens.push(Token::Stdin);
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
        }
        let read_clients = self.stdin_buf.len() < STDIN_BACKLOG;
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::empty();
            if read_clients {
                flags |= PollFlags::POLLIN;
            }
            if !c.output.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Client(i));
            fds.push(PollFd::new(c.stream.as_fd(), flags));
        }
        (tokens, fds)
    }

    fn handle(&mut self, token: Token, revents: PollFlags) {
        match token {
            Token::Signal => self.reap(),
            Token::Listener => self.accept(),
            Token::Out => {
                if revents.contains(PollFlags::POLLOUT) {
                    self.flush_stdin();
                }
                if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_output(LogStream::Stdout);
                }
            }
            Token::Err => self.read_output(LogStream::Stderr),
            Token::Stdin => self.flush_stdin(),
            Token::Client(i) => {
                if revents.contains(PollFlags::POLLOUT) {
                    self.flush_client(i);
                }
                if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_client(i);
                }
            }
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(self.pid) && self.exit.is_none() {
                        self.exit = Some((status, SystemTime::now()));
                        self.drain_until = Some(Instant::now() + DRAIN);
                    }
                }
            }
        }
    }

    fn read_output(&mut self, stream: LogStream) {
        let slot = match stream {
            LogStream::Stdout => &mut self.out,
            LogStream::Stderr => &mut self.err,
        };
        let Some(fd) = slot.as_ref() else { return };
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            // A pty master reads EIO once every slave is closed: the end of the output.
            Err(_) => None,
        };
        let Some(n) = n else {
            *slot = None;
            if stream == LogStream::Stdout && self.tty {
                self.stdin_buf.clear();
            }
            return;
        };
        let data = &self.buf[..n];
        if let Err(e) = self.log.write(stream, data, SystemTime::now()) {
            eprintln!("writing log {}: {e}", self.spec.log_path.display());
        }
        let kind = match stream {
            LogStream::Stdout => FRAME_STDOUT,
            LogStream::Stderr => FRAME_STDERR,
        };
        for c in self.clients.iter_mut() {
            if matches!(c.hello, Some(HELLO_ATTACH | HELLO_ATTACH_STDIN)) {
                push_frame(&mut c.output, kind, data);
                if c.output.len() > CLIENT_BACKLOG {
                    c.gone = true;
                }
            }
        }
        for i in 0..self.clients.len() {
            self.flush_client(i);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            hello: None,
                            input: Vec::new(),
                            output: Vec::new(),
                            gone: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("accepting an attach client: {e}");
                    return;
                }
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut chunk = [0u8; 16 * 1024];
        let c = &mut self.clients[i];
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                c.gone = true;
                if c.hello == Some(HELLO_ATTACH_STDIN) {
                    self.stdin_session_ended();
                }
                return;
            }
            Ok(n) => c.input.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(_) => {
                c.gone = true;
                return;
            }
        }
        if c.hello.is_none() {
            let h = c.input.remove(0);
            if !matches!(h, HELLO_ATTACH | HELLO_ATTACH_STDIN | HELLO_WAIT) {
                c.gone = true;
                return;
            }
            c.hello = Some(h);
        }
        // Whole frames only; the rest waits for more bytes.
        let mut frames = Vec::new();
        let mut at = 0;
        while c.input.len() - at >= 5 {
            let kind = c.input[at];
            let len = u32::from_be_bytes([
                c.input[at + 1],
                c.input[at + 2],
                c.input[at + 3],
                c.input[at + 4],
            ]) as usize;
            if len > MAX_FRAME {
                c.gone = true;
                return;
            }
            if c.input.len() - at - 5 < len {
                break;
            }
            frames.push((kind, c.input[at + 5..at + 5 + len].to_vec()));
            at += 5 + len;
        }
        c.input.drain(..at);
        let may_write = c.hello == Some(HELLO_ATTACH_STDIN);
        for (kind, payload) in frames {
            match kind {
                FRAME_STDIN if may_write && self.spec.stdin && !self.stdin_closing => {
                    self.stdin_buf.extend_from_slice(&payload);
                }
                FRAME_STDIN_CLOSE if may_write => self.stdin_session_ended(),
                FRAME_RESIZE if payload.len() == 4 && self.tty => {
                    let cols = u16::from_be_bytes([payload[0], payload[1]]);
                    let rows = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(master) = &self.out
                        && let Err(e) = sys::set_winsize(master.as_fd(), cols, rows)
                    {
                        eprintln!("resizing the terminal: {e}");
                    }
                }
                _ => {}
            }
        }
        self.flush_stdin();
    }

    /// A client that could write stdin detached or closed its stdin: with `stdin_once` the
    /// container's stdin is closed once what it sent is delivered (upstream's StdinOnce).
    fn stdin_session_ended(&mut self) {
        if self.spec.stdin_once && !self.tty {
            self.stdin_closing = true;
            self.flush_stdin();
        }
    }

    fn flush_stdin(&mut self) {
        let target = if self.tty { &self.out } else { &self.stdin };
        if let Some(fd) = target {
            while !self.stdin_buf.is_empty() {
                match nix::unistd::write(fd, &self.stdin_buf) {
                    Ok(n) => {
                        self.stdin_buf.drain(..n);
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => break,
                    Err(_) => {
                        // The container closed its stdin: nothing more can be delivered.
                        self.stdin_buf.clear();
                        if !self.tty {
                            self.stdin = None;
                        }
                        break;
                    }
                }
            }
        } else {
            self.stdin_buf.clear();
        }
        if self.stdin_closing && self.stdin_buf.is_empty() {
            self.stdin = None;
        }
    }

    fn flush_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while !c.output.is_empty() && !c.gone {
            match nix::sys::socket::send(
                c.stream.as_raw_fd(),
                &c.output,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => c.gone = true,
            }
        }
    }

    /// Records the exit, then lets clients go: a waiter seeing EOF finds exit.json.
    fn finish(&mut self) {
        let now = SystemTime::now();
        if let Err(e) = self.log.finish(now) {
            eprintln!("writing log: {e}");
        }
        let (status, finished_at) = self.exit.unwrap_or((WaitStatus::StillAlive, now));
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (files::EXIT_UNKNOWN, None),
        };
        let cgroup = spec::cgroup_path(&self.spec);
        let oom_killed = match self.cgroups.oom_kills(&cgroup) {
            Ok(n) => n > 0,
            Err(e) => {
                eprintln!("reading the OOM kill count of {cgroup}: {e}");
                false
            }
        };
        let record = ExitRecord {
            code,
            signal,
            oom_killed,
            started_at_ns: Some(self.started_at_ns),
            finished_at_ns: sys::to_unix_nanos(finished_at),
            message: String::new(),
        };
        if let Err(e) = files::write_json(&self.paths.exit(), &record) {
            eprintln!("writing exit.json: {e}");
        }
        // Best effort: hand attached clients the last output, within a bound.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && self.clients.iter().any(|c| !c.gone && !c.output.is_empty())
        {
            for i in 0..self.clients.len() {
                self.flush_client(i);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.clients.clear();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), String> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| e.to_string())?;
    Ok(())
}

pub(crate) fn push_frame(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// Accepts the runtime's connection on the console socket and takes the pty master it sends.
pub(crate) fn receive_master(console: &UnixListener) -> Result<OwnedFd, String> {
    console
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match console.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                let mut fds = [PollFd::new(console.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) => return Err(format!("waiting for the terminal: {e}")),
        }
    };
    let mut buf = [0u8; 4096];
    loop {
        match sys::recv_with_fds(conn.as_fd(), &mut buf) {
            Ok((_, mut fds)) if !fds.is_empty() => return Ok(fds.swap_remove(0)),
            Ok((0, _)) => return Err("the runtime closed the console socket without a pty".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) => return Err(format!("receiving the pty master: {e}")),
        }
    }
}
