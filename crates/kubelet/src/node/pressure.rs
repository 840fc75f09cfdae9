//! Node pressure, measured like upstream's eviction manager with k3s's default hard thresholds
//! (`--eviction-hard`): `memory.available < 100Mi`, `nodefs.available < 5%` (upstream's default
//! is 10%; k3s lowers it to 5%, and so does skiff), and `pid.available < 5%`. The heartbeat reports
//! it as node conditions; the pod manager evicts when memory runs out.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// Hard eviction thresholds (the kubelet's `--eviction-hard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// `memory.available` below this many bytes is memory pressure.
    pub memory_available_bytes: u64,
    /// `nodefs.available` below this percentage is disk pressure.
    pub nodefs_available_pct: u8,
}

impl Default for Thresholds {
    /// k3s's defaults: `memory.available<100Mi,nodefs.available<5%`.
    fn default() -> Self {
        Thresholds {
            memory_available_bytes: 100 << 20,
            nodefs_available_pct: 5,
        }
    }
}

impl Thresholds {
    /// Parses `memory.available<100Mi,nodefs.available<5%` (either part may be left out; the
    /// default stays for it).
    pub fn parse(s: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?}: expected <signal><<quantity>"))?;
            match signal.trim() {
                "memory.available" => {
                    let bytes = crate::quantity::to_millis(value.trim())
                        .map_err(|e| format!("{part:?}: {e}"))?
                        / 1000;
                    t.memory_available_bytes = u64::try_from(bytes)
                        .map_err(|_| format!("{part:?}: must not be negative"))?;
                }
                "nodefs.available" => {
                    let pct = value
                        .trim()
                        .strip_suffix('%')
                        .and_then(|v| v.parse::<u8>().ok())
                        .filter(|v| *v <= 100)
                        .ok_or_else(|| format!("{part:?}: expected a percentage like 5%"))?;
                    t.nodefs_available_pct = pct;
                }
                other => return Err(format!("unsupported eviction signal {other:?}")),
            }
        }
        Ok(t)
    }
}

pub struct Pressure {
    data_dir: PathBuf,
    thresholds: Thresholds,
    tx: watch::Sender<Flags>,
}

impl Pressure {
    pub fn new(data_dir: PathBuf, thresholds: Thresholds) -> Pressure {
        let (tx, _) = watch::channel(Flags::default());
        let p = Pressure {
            data_dir,
            thresholds,
            tx,
        };
        p.tx.send_replace(p.measure());
        p
    }

    pub fn current(&self) -> Flags {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Flags> {
        self.tx.subscribe()
    }

    fn measure(&self) -> Flags {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available_kb = meminfo
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        let memory =
            available_kb.is_some_and(|kb| kb * 1024 < self.thresholds.memory_available_bytes);
        let disk = nix::sys::statvfs::statvfs(&self.data_dir)
            .map(|s| {
                s.blocks_available() * 100
                    < s.blocks() * u64::from(self.thresholds.nodefs_available_pct)
            })
            .unwrap_or(false);
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let running = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
            s.split_whitespace()
                .nth(3)
                .and_then(|f| f.split('/').nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        });
        let pid = matches!((pid_max, running), (Some(max), Some(n)) if n * 20 > max * 19);
        Flags { memory, disk, pid }
    }

    /// Re-measures every `every` until shutdown, notifying subscribers on change.
    pub async fn run(&self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = self.measure();
                    self.tx.send_if_modified(|f| {
                        let changed = *f != now;
                        *f = now;
                        changed
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_thresholds() {
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        let t = Thresholds::parse("memory.available<1Gi, nodefs.available<1%").unwrap();
        assert_eq!(t.memory_available_bytes, 1 << 30);
        assert_eq!(t.nodefs_available_pct, 1);
        assert!(Thresholds::parse("nodefs.available<101%").is_err());
        assert!(Thresholds::parse("imagefs.available<5%").is_err());
        assert!(Thresholds::parse("memory.available").is_err());
    }
}
