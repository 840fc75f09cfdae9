//! Liveness, readiness and startup probes (exec, httpGet, tcpSocket) and lifecycle hook
//! handlers, run like upstream's prober: after `initialDelaySeconds`, every `periodSeconds`,
//! each attempt bounded by `timeoutSeconds`, reporting only when the result crosses
//! `successThreshold`/`failureThreshold`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cri::Cri;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe's verdict after crossing its threshold.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub container: String,
    pub instance: String,
    pub kind: Kind,
    pub ok: bool,
    pub message: String,
}

/// The action of a probe or hook.
pub enum Action<'a> {
    Exec(&'a [String]),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
}

fn port_of(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port {name:?} is not a named port of container {}", c.name)),
    }
}

/// Runs one attempt; Ok(message) on success, Err(message) on failure.
pub async fn run_action(
    action: &Action<'_>,
    cri: &dyn Cri,
    container_id: &str,
    c: &Container,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<String, String> {
    match action {
        Action::Exec(cmd) => match cri.exec_sync(container_id, cmd, timeout).await {
            Ok((0, out)) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok((code, out)) => Err(format!(
                "command {:?} exited with {code}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out).trim_end()
            )),
            Err(e) => Err(e),
        },
        Action::Tcp(t) => {
            let port = port_of(&t.port, c)?;
            let host = t
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            let addr = SocketAddr::new(host, port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(String::new()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http(h) => {
            let port = port_of(&h.port, c)?;
            let host = h
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            if h.scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
            {
                return Err("HTTPS probes are not supported by this node yet".into());
            }
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let addr = SocketAddr::new(host, port);
            let url = format!("http://{addr}{path}");
            match tokio::time::timeout(timeout, http_get(addr, &path, h)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(String::new()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str, h: &HTTPGetAction) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    let mut has_host = false;
    for hd in h.http_headers.iter().flatten() {
        if hd.name.eq_ignore_ascii_case("host") {
            has_host = true;
        }
        if hd.name.contains(['\r', '\n']) || hd.value.contains(['\r', '\n']) {
            return Err("invalid probe header".into());
        }
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    if !has_host {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        got += n;
        if n == 0 || buf[..got].windows(2).any(|w| w == b"\r\n") || got == buf.len() {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    Ok(code)
}

pub fn action_of(p: &Probe) -> Option<Action<'_>> {
    if let Some(e) = &p.exec {
        return Some(Action::Exec(e.command.as_deref().unwrap_or_default()));
    }
    if let Some(h) = &p.http_get {
        return Some(Action::Http(h));
    }
    if let Some(t) = &p.tcp_socket {
        return Some(Action::Tcp(t));
    }
    None
}

/// Everything a probe loop needs.
pub struct ProbeTask {
    pub cri: Arc<dyn Cri>,
    pub container: Container,
    pub instance: String,
    pub pod_ip: IpAddr,
    pub kind: Kind,
    pub probe: Probe,
    pub tx: mpsc::UnboundedSender<super::worker::Msg>,
    pub stop: CancellationToken,
}

impl ProbeTask {
    /// Probes until stopped, sending a verdict whenever the result flips.
    pub async fn run(self) {
        let p = &self.probe;
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        let initial = secs(p.initial_delay_seconds, 0);
        let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        let Some(action) = action_of(p) else {
            let _ = self.tx.send(super::worker::Msg::Probe(Verdict {
                container: self.container.name.clone(),
                instance: self.instance.clone(),
                kind: self.kind,
                ok: false,
                message: "probe has no handler this node supports (grpc is not supported yet)"
                    .into(),
            }));
            return;
        };
        tokio::select! {
            _ = self.stop.cancelled() => return,
            _ = tokio::time::sleep(initial) => {}
        }
        let (mut successes, mut failures) = (0, 0);
        let mut last: Option<bool> = None;
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = run_action(
                &action,
                self.cri.as_ref(),
                &self.instance,
                &self.container,
                self.pod_ip,
                timeout,
            )
            .await;
            let (ok, message) = match result {
                Ok(m) => (true, m),
                Err(m) => (false, m),
            };
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            let verdict = if ok && successes >= success_threshold {
                Some(true)
            } else if !ok && failures >= failure_threshold {
                Some(false)
            } else {
                None
            };
            // Failed liveness/startup verdicts are reported every time (each kills the
            // container); others only when they flip.
            if let Some(v) = verdict
                && (last != Some(v) || (!v && self.kind != Kind::Readiness))
            {
                last = Some(v);
                let _ = self.tx.send(super::worker::Msg::Probe(Verdict {
                    container: self.container.name.clone(),
                    instance: self.instance.clone(),
                    kind: self.kind,
                    ok: v,
                    message,
                }));
                if !v && self.kind != Kind::Readiness {
                    return;
                }
                if v && self.kind == Kind::Startup {
                    return;
                }
            }
        }
    }
}
