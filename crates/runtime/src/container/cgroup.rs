//! The container's cgroup as the kernel shows it (v1, hybrid or v2): usage for stats, the OOM
//! kill counter for the exit record, and removal of the cgroup and its empty parents. youki or
//! runc create the cgroup and apply the limits; this module only reads and removes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Controller names among a v1 mount's super options (the rest are flags like `xattr`).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Mount points of the cgroup hierarchies, from `/proc/self/mountinfo`.
#[derive(Debug, Default)]
pub(crate) struct Hierarchies {
    /// (mount point, controllers) of each v1 hierarchy.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    pub v2: Option<PathBuf>,
}

impl Hierarchies {
    pub fn load() -> io::Result<Hierarchies> {
        Ok(Self::parse(&fs::read_to_string("/proc/self/mountinfo")?))
    }

    fn parse(mountinfo: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <src> <super opts>"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let super_opts = right.nth(1).unwrap_or("");
            let mount_point = unescape(mount_point);
            match fstype {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(mount_point),
                "cgroup" => {
                    let controllers = super_opts
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(str::to_string)
                        .collect();
                    if !h.v1.iter().any(|(m, _)| *m == mount_point) {
                        h.v1.push((mount_point, controllers));
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// Pure v2: no v1 hierarchy has a controller (a named `name=systemd` one has none).
    pub fn unified(&self) -> bool {
        self.v1.iter().all(|(_, c)| c.is_empty()) && self.v2.is_some()
    }

    fn v1_dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|(_, c)| c.iter().any(|x| x == controller))
            .map(|(m, _)| join(m, cgroup))
    }

    fn v2_dir(&self, cgroup: &str) -> Option<PathBuf> {
        self.v2.as_ref().map(|m| join(m, cgroup))
    }

    /// Cumulative CPU time in nanoseconds.
    pub fn cpu_usage_ns(&self, cgroup: &str) -> io::Result<u64> {
        if !self.unified()
            && let Some(dir) = self.v1_dir("cpuacct", cgroup)
        {
            return parse_u64(&fs::read_to_string(dir.join("cpuacct.usage"))?);
        }
        let dir = self.v2_dir(cgroup).ok_or_else(no_hierarchy)?;
        let stat = fs::read_to_string(dir.join("cpu.stat"))?;
        Ok(keyed(&stat, "usage_usec").unwrap_or(0).saturating_mul(1000))
    }

    /// Usage minus inactive file pages, like cAdvisor's working set.
    pub fn memory_working_set(&self, cgroup: &str) -> io::Result<u64> {
        if !self.unified()
            && let Some(dir) = self.v1_dir("memory", cgroup)
        {
            let usage = parse_u64(&fs::read_to_string(dir.join("memory.usage_in_bytes"))?)?;
            let stat = fs::read_to_string(dir.join("memory.stat"))?;
            let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0);
            return Ok(usage.saturating_sub(inactive));
        }
        let dir = self.v2_dir(cgroup).ok_or_else(no_hierarchy)?;
        let usage = parse_u64(&fs::read_to_string(dir.join("memory.current"))?)?;
        let stat = fs::read_to_string(dir.join("memory.stat"))?;
        Ok(usage.saturating_sub(keyed(&stat, "inactive_file").unwrap_or(0)))
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self, cgroup: &str) -> io::Result<u64> {
        if !self.unified()
            && let Some(dir) = self.v1_dir("memory", cgroup)
        {
            let control = fs::read_to_string(dir.join("memory.oom_control"))?;
            return Ok(keyed(&control, "oom_kill").unwrap_or(0));
        }
        let dir = self.v2_dir(cgroup).ok_or_else(no_hierarchy)?;
        let events = fs::read_to_string(dir.join("memory.events"))?;
        Ok(keyed(&events, "oom_kill").unwrap_or(0))
    }

    /// Pids of the processes in the cgroup (from any hierarchy that has it).
    pub fn pids(&self, cgroup: &str) -> Vec<i32> {
        let mut dirs: Vec<PathBuf> = self.v1.iter().map(|(m, _)| join(m, cgroup)).collect();
        dirs.extend(self.v2_dir(cgroup));
        for dir in dirs {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                return procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
            }
        }
        Vec::new()
    }

    fn mounts(&self) -> Vec<&Path> {
        let mut mounts: Vec<&Path> = self.v1.iter().map(|(m, _)| m.as_path()).collect();
        mounts.extend(self.v2.as_deref());
        mounts
    }

    /// Removes the cgroup in every hierarchy, retrying while the kernel still tears down
    /// exiting tasks (EBUSY), up to `deadline`.
    pub fn remove(&self, cgroup: &str, deadline: Duration) -> io::Result<()> {
        let until = Instant::now() + deadline;
        for mount in self.mounts() {
            let dir = join(mount, cgroup);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("removing cgroup {}: {e}", dir.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes each parent of `cgroup` up to `top` (inclusive) that is empty; a parent another
    /// container still uses stays. Hold [`lock_tree`] exclusively while calling this.
    pub fn remove_empty_parents(&self, cgroup: &str, top: &str) -> io::Result<()> {
        let top = top.trim_end_matches('/');
        let mut parent = Path::new(cgroup).parent();
        while let Some(p) = parent {
            let s = p.to_str().unwrap_or("");
            if s.is_empty() || s == "/" || !(s == top || s.starts_with(&format!("{top}/"))) {
                break;
            }
            for mount in self.mounts() {
                match fs::remove_dir(join(mount, s)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                    Err(e) => return Err(e),
                }
            }
            parent = p.parent();
        }
        Ok(())
    }
}

/// Host-wide lock between creating cgroup directories (the OCI runtime's `mkdir -p`, in the
/// shim: shared) and removing empty parents (`Runtime::remove`: exclusive), so a parent is
/// never deleted between another container's mkdir of it and of its child.
const TREE_LOCK: &str = "/run/skiff-cgroups.lock";

pub(crate) struct TreeLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

pub(crate) fn lock_tree(exclusive: bool) -> io::Result<TreeLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(TREE_LOCK)?;
    let arg = if exclusive {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockShared
    };
    let lock = nix::fcntl::Flock::lock(file, arg).map_err(|(_, e)| io::Error::from(e))?;
    Ok(TreeLock { _lock: lock })
}

fn join(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

fn no_hierarchy() -> io::Error {
    io::Error::other("no cgroup hierarchy mounted")
}

fn parse_u64(s: &str) -> io::Result<u64> {
    s.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("not a number: {:?}", s.trim())))
}

/// The value of `key` in a "key value" per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_hybrid_mountinfo() {
        let h = Hierarchies::parse(HYBRID);
        assert!(!h.unified());
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1_dir("cpuacct", "/skiff/a"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/skiff/a"))
        );
        assert_eq!(h.v1.len(), 3);
        assert!(h.v1[2].1.is_empty(), "name=systemd has no controller");
    }

    #[test]
    fn pure_v2_is_unified() {
        let h = Hierarchies::parse("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert!(h.unified());
        assert_eq!(
            h.v2_dir("/skiff/x"),
            Some(PathBuf::from("/sys/fs/cgroup/skiff/x"))
        );
    }

    #[test]
    fn keyed_values() {
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(
            keyed("cache 5\ntotal_inactive_file 7\n", "total_inactive_file"),
            Some(7)
        );
        assert_eq!(keyed("a 1\n", "b"), None);
        assert_eq!(unescape("/a\\040b"), Path::new("/a b"));
    }
}
