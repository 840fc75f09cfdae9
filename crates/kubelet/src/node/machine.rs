//! What this machine offers a node: CPUs and memory (capped by the agent's own cgroup limits,
//! as upstream's cAdvisor reports them), the disk under the data dir, and the identity fields
//! of `node.status.nodeInfo`.

use std::path::Path;

/// Capacity of the machine as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Whole CPUs (upstream reports the CPU count, not the cgroup quota, unless pinned).
    pub cpus: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
}

impl Machine {
    /// Reads `/proc` and `/sys`; `data_dir` is where ephemeral storage lives.
    pub fn probe(data_dir: &Path) -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let mem_total = read("/proc/meminfo")
            .as_deref()
            .and_then(meminfo_total)
            .unwrap_or(0);
        let cgroup_limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
            .or_else(|| read("/sys/fs/cgroup/memory.max"))
            .and_then(|s| s.trim().parse::<u64>().ok());
        let memory_bytes = match cgroup_limit {
            Some(l) if l > 0 && l < mem_total => l,
            _ => mem_total,
        };
        let ephemeral_storage_bytes = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let machine_id = read("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let system_uuid = read("/sys/class/dmi/id/product_uuid")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|| machine_id.clone());
        let boot_id = read("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let kernel_version = read("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let os_image = read("/etc/os-release")
            .as_deref()
            .and_then(pretty_name)
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus,
            memory_bytes,
            ephemeral_storage_bytes,
            machine_id,
            system_uuid,
            boot_id,
            kernel_version,
            os_image,
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `MemTotal:  24576000 kB` in bytes.
fn meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn pretty_name(os_release: &str) -> Option<String> {
    let line = os_release.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            meminfo_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(meminfo_total("nothing"), None);
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn probes_this_machine() {
        let m = Machine::probe(Path::new("/"));
        assert!(m.cpus >= 1);
        assert!(m.memory_bytes > 0);
        assert!(m.ephemeral_storage_bytes > 0);
    }
}
