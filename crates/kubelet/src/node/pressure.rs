//! Node pressure, measured like upstream's eviction manager with k3s's default hard thresholds:
//! `memory.available < 100Mi`, `nodefs.available < 5%` (upstream's default is 10%; k3s lowers
//! it to 5%, and so does skiff), `pid.available < 5%`. The heartbeat reports
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

pub struct Pressure {
    data_dir: PathBuf,
    tx: watch::Sender<Flags>,
}

impl Pressure {
    pub fn new(data_dir: PathBuf) -> Pressure {
        let (tx, _) = watch::channel(Flags::default());
        let p = Pressure { data_dir, tx };
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
        let memory = available_kb.is_some_and(|kb| kb * 1024 < 100 << 20);
        let disk = nix::sys::statvfs::statvfs(&self.data_dir)
            .map(|s| s.blocks_available() * 20 < s.blocks())
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
