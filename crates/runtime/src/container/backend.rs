//! The OCI runtime behind the shims: youki's libcontainer in-process, or an external `runc`,
//! both driven with the same bundle. Only ever called from a single-threaded shim process.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use super::RuntimeKind;
use super::files::Paths;

/// The new process's stdio: the shim's pipes, or a pty whose master the runtime sends to the
/// unix socket at this path.
pub(crate) enum Io {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console(PathBuf),
}

/// Creates the container from the bundle in `paths.dir` and starts its process; the pid.
/// The error text is what the kubelet shows (upstream-like where we know the cause).
pub(crate) fn create_and_start(
    kind: &RuntimeKind,
    id: &str,
    paths: &Paths,
    io: Io,
) -> Result<i32, String> {
    fs::create_dir_all(paths.runtime_root()).map_err(|e| format!("creating state dir: {e}"))?;
    match kind {
        RuntimeKind::Embedded => youki_create(id, paths, io),
        RuntimeKind::Runc(runc) => runc_create(runc, id, paths, io),
    }
}

fn youki_create(id: &str, paths: &Paths, io: Io) -> Result<i32, String> {
    let tty = matches!(io, Io::Console(_));
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(paths.runtime_root())
        .map_err(|e| chain(&e))?
        .with_executor(SkiffExecutor { seccomp: None })
        .validate_id()
        .map_err(|e| chain(&e))?;
    builder = match io {
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr),
        Io::Console(socket) => builder.with_console_socket(Some(socket)),
    };
    let mut container = builder
        .as_init(&paths.dir)
        .with_systemd(false)
        .with_detach(tty)
        .build()
        .map_err(|e| chain(&e))?;
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or("the runtime recorded no pid")?;
    if let Err(e) = container.start() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        return Err(chain(&e));
    }
    Ok(pid)
}

fn runc_create(runc: &Path, id: &str, paths: &Paths, io: Io) -> Result<i32, String> {
    let pid_file = paths.dir.join("init.pid");
    let log = paths.dir.join("runc.log");
    let mut cmd = runc_cmd(runc, paths, &log);
    cmd.arg("create")
        .arg("--bundle")
        .arg(&paths.dir)
        .arg("--pid-file")
        .arg(&pid_file);
    set_io(&mut cmd, io);
    cmd.arg(id);
    run(cmd, &log, "create")?;
    let mut start = runc_cmd(runc, paths, &log);
    start
        .args(["start", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    run(start, &log, "start")?;
    read_pid(&pid_file)
}

/// Runs one more process in the running container `id` as described by `process.json` (the
/// OCI `process` object). `seccomp`: the container's profile, which youki 0.7 does not apply to
/// exec'd processes on its own.
pub(crate) fn exec(
    kind: &RuntimeKind,
    id: &str,
    paths: &Paths,
    process_json: &Path,
    seccomp: Option<LinuxSeccomp>,
    io: Io,
) -> Result<i32, String> {
    match kind {
        RuntimeKind::Embedded => {
            let tty = matches!(io, Io::Console(_));
            let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_root_path(paths.runtime_root())
                .map_err(|e| chain(&e))?
                .with_executor(SkiffExecutor { seccomp });
            builder = match io {
                Io::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => builder
                    .with_stdin(stdin)
                    .with_stdout(stdout)
                    .with_stderr(stderr),
                Io::Console(socket) => builder.with_console_socket(Some(socket)),
            };
            let pid = builder
                .as_tenant()
                .with_process(Some(process_json))
                .with_detach(tty)
                .build()
                .map_err(|e| chain(&e))?;
            Ok(pid.as_raw())
        }
        RuntimeKind::Runc(runc) => {
            let pid_file = process_json.with_extension("pid");
            let log = process_json.with_extension("log");
            let mut cmd = runc_cmd(runc, paths, &log);
            cmd.args(["exec", "--detach", "--pid-file"])
                .arg(&pid_file)
                .arg("--process")
                .arg(process_json);
            set_io(&mut cmd, io);
            cmd.arg(id);
            let result = run(cmd, &log, "exec").and_then(|()| read_pid(&pid_file));
            let _ = fs::remove_file(&pid_file);
            let _ = fs::remove_file(&log);
            result
        }
    }
}

fn runc_cmd(runc: &Path, paths: &Paths, log: &Path) -> Command {
    let mut cmd = Command::new(runc);
    cmd.arg("--root")
        .arg(paths.runtime_root())
        .arg("--log")
        .arg(log)
        .args(["--log-format", "json"]);
    cmd
}

fn set_io(cmd: &mut Command, io: Io) {
    match io {
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            cmd.stdin(Stdio::from(stdin))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
        }
        Io::Console(socket) => {
            // runc connects with the path as given; the shims run in the socket's directory,
            // so its bare name works when the full path is too long for a unix address.
            let arg = match socket.file_name() {
                Some(name) if socket.as_os_str().len() > 100 => PathBuf::from(name),
                _ => socket,
            };
            cmd.arg("--console-socket")
                .arg(arg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
    }
}

fn run(mut cmd: Command, log: &Path, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("running runc {what}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    // runc writes JSON lines; the last error's "msg" says why.
    let text = fs::read_to_string(log).unwrap_or_default();
    let msg = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("runc {what} failed: {status}"));
    Err(upstream_message(&msg))
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("bad pid {:?} in {}", text.trim(), path.display()))
}

/// An error with its sources, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    upstream_message(&parts.join(": "))
}

/// When the cause is one upstream names (runc's `exec: "x": …`), that part alone.
fn upstream_message(text: &str) -> String {
    match text.find("exec: \"") {
        Some(i) => {
            let rest = &text[i..];
            let end = rest.find(" in $PATH").map(|j| j + " in $PATH".len());
            match end {
                Some(end) => rest[..end].to_string(),
                None => rest.to_string(),
            }
        }
        None => text.to_string(),
    }
}

/// youki's default executor, plus: signal dispositions and mask reset to defaults (the shim
/// blocks SIGCHLD and Rust ignores SIGPIPE, both inherited across exec), an optional seccomp
/// filter loaded last, and runc's wording for a missing executable.
#[derive(Clone)]
struct SkiffExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for SkiffExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
        for sig in Signal::iterator() {
            if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
                continue;
            }
            #[allow(unsafe_code)]
            // SAFETY: installing SIG_DFL runs no handler code; this process is about to exec.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| ExecutorError::Other(format!("resetting the signal mask: {e}")))?;
        if let Some(seccomp) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| ExecutorError::Other(format!("loading seccomp profile: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec).map_err(|e| match e {
            ExecutorValidationError::ArgValidationError(msg) => {
                // "executable 'x' not found in $PATH" -> runc's `exec: "x": executable file
                // not found in $PATH`, which the kubelet and users recognise.
                let missing = msg
                    .strip_prefix("executable '")
                    .and_then(|r| r.strip_suffix("' not found in $PATH"));
                match missing {
                    Some(name) => ExecutorValidationError::ArgValidationError(format!(
                        "exec: \"{name}\": executable file not found in $PATH"
                    )),
                    None => ExecutorValidationError::ArgValidationError(msg),
                }
            }
            other => other,
        })
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_message_keeps_the_exec_cause() {
        assert_eq!(
            upstream_message(
                "failed to create container: error in executing process : exec: \"nope\": executable file not found in $PATH: x"
            ),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(upstream_message("other failure"), "other failure");
    }
}
