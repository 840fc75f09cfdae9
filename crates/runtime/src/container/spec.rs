//! The OCI runtime spec (`config.json`) for a container, with secure defaults modelled on
//! containerd's: its default capabilities, a deny-all device cgroup plus the standard devices,
//! masked and read-only /proc and /sys paths, no_new_privs, and skiff's seccomp profile.
//! `privileged` lifts them like upstream. Written as JSON in the spec's own field names, so it
//! can be read next to the runtime-spec document, and parsed back with oci-spec to validate it.

use std::path::Path;

use serde_json::{Value, json};

use super::{ContainerSpec, MountKind, Seccomp, seccomp};

/// containerd's default capability set (`oci.defaultUnixCaps`).
pub(crate) const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, in kernel bit order (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40).
pub(crate) const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks what the kernel or the OCI runtime would otherwise reject with a worse message.
pub(crate) fn validate(spec: &ContainerSpec) -> Result<(), String> {
    if spec.args.is_empty() {
        return Err("no command: args is empty".into());
    }
    if spec.layers.is_empty() {
        return Err("no image layers".into());
    }
    for layer in &spec.layers {
        if !layer.is_absolute() {
            return Err(format!("layer path {} is not absolute", layer.display()));
        }
    }
    if !spec.log_path.is_absolute() {
        return Err(format!(
            "log path {:?} is not absolute",
            spec.log_path.display()
        ));
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return Err(format!("working directory {:?} is not absolute", spec.cwd));
    }
    if !spec.cgroup_parent.starts_with('/') || spec.cgroup_parent.contains("..") {
        return Err(format!(
            "cgroup parent {:?} must be an absolute path without '..'",
            spec.cgroup_parent
        ));
    }
    for m in &spec.mounts {
        if !m.destination.starts_with('/') || m.destination.split('/').any(|c| c == "..") {
            return Err(format!(
                "mount destination {:?} must be an absolute path without '..'",
                m.destination
            ));
        }
        if matches!(m.kind, MountKind::Bind { .. }) && !m.source.is_absolute() {
            return Err(format!(
                "bind mount source {:?} is not absolute",
                m.source.display()
            ));
        }
    }
    for e in &spec.env {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(format!("environment entry {e:?} is not NAME=value"));
        }
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    if let Some(limit) = spec.resources.memory_limit
        && limit <= 0
    {
        return Err(format!("memory limit {limit} is not positive"));
    }
    if spec.log_rotation.max_files == 0 || spec.log_rotation.max_size == 0 {
        return Err("log rotation needs max_files >= 1 and max_size >= 1".into());
    }
    capabilities(spec)?;
    Ok(())
}

/// The capability set after `privileged`, add and drop; names normalised to `CAP_X`.
/// Limited to what this process may grant (its bounding set), like containerd: "all"
/// capabilities means all the runtime itself has.
pub(crate) fn capabilities(spec: &ContainerSpec) -> Result<Vec<String>, String> {
    let known = grantable();
    if spec.security.privileged {
        return Ok(known.iter().map(|c| c.to_string()).collect());
    }
    let normalise = |name: &str| -> Result<String, String> {
        let upper = name.to_ascii_uppercase();
        let full = if upper == "ALL" || upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if full == "ALL" || ALL_CAPABILITIES.contains(&full.as_str()) {
            Ok(full)
        } else {
            Err(format!("unknown capability {name:?}"))
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for d in &spec.security.drop_capabilities {
        let d = normalise(d)?;
        if d == "ALL" {
            caps.clear();
        } else {
            caps.retain(|c| *c != d);
        }
    }
    for a in &spec.security.add_capabilities {
        let a = normalise(a)?;
        if a == "ALL" {
            caps = known.iter().map(|c| c.to_string()).collect();
        } else if !caps.contains(&a) {
            caps.push(a);
        }
    }
    // One this process lacks (or the kernel does not know) cannot be granted; the OCI
    // runtime would fail on it.
    caps.retain(|c| known.contains(&c.as_str()));
    Ok(caps)
}

/// The capabilities in this process's bounding set, in kernel bit order.
fn grantable() -> Vec<&'static str> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The runtime spec. `rootfs` is relative to the bundle; `cgroup_ns` on pure cgroup v2 hosts
/// (containerd does the same).
pub(crate) fn oci_config(
    spec: &ContainerSpec,
    rootfs: &Path,
    cgroup_ns: bool,
) -> Result<Value, String> {
    validate(spec)?;
    let privileged = spec.security.privileged;
    let caps = capabilities(spec)?;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    if !spec.hostname.is_empty() && !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    let user = spec.user.clone().unwrap_or_default();
    let mut process = json!({
        "terminal": spec.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": spec.args,
        "env": env,
        "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
    });
    // youki loads seccomp before dropping capabilities only when noNewPrivileges is absent, so
    // leave it out rather than writing `false`.
    if spec.security.no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    if let Some(adj) = spec.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.push(match &spec.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    if cgroup_ns {
        namespaces.push(json!({"type": "cgroup"}));
    }

    let devices = if privileged {
        vec![json!({"allow": true, "access": "rwm"})]
    } else {
        // Deny everything first (oci-spec's default spec has no such rule); youki and runc
        // then allow /dev/null, zero, full, random, urandom, tty, console, ptmx, pts and tun.
        vec![json!({"allow": false, "access": "rwm"})]
    };
    let mut resources = json!({"devices": devices});
    let r = &spec.resources;
    if let Some(limit) = r.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = r.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = r.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
    }
    if let Some(period) = r.cpu_period {
        cpu.insert("period".into(), json!(period));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = r.pids_limit {
        resources["pids"] = json!({"limit": limit});
    }

    let mut linux = json!({
        "cgroupsPath": cgroup_path(spec),
        "resources": resources,
        "namespaces": namespaces,
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if spec.security.seccomp == Seccomp::RuntimeDefault {
            linux["seccomp"] = seccomp::runtime_default();
        }
    }

    let mut config = json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": spec.readonly_rootfs},
        "process": process,
        "mounts": mounts(spec),
        "linux": linux,
    });
    if !spec.hostname.is_empty() {
        config["hostname"] = json!(spec.hostname);
    }
    // oci-spec is what youki reads the file with: catch a mistake here, with this container's
    // id in the message, rather than as a parse error in the shim.
    serde_json::from_value::<oci_spec::runtime::Spec>(config.clone())
        .map_err(|e| format!("generated an invalid OCI spec: {e}"))?;
    Ok(config)
}

/// `<cgroup_parent>/<id>`.
pub(crate) fn cgroup_path(spec: &ContainerSpec) -> String {
    format!("{}/{}", spec.cgroup_parent.trim_end_matches('/'), spec.id)
}

/// The standard mounts, with the kubelet's replacing any at the same destination.
fn mounts(spec: &ContainerSpec) -> Vec<Value> {
    let sys_opts: &[&str] = if spec.security.privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let standard = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"][..]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        ("/sys", "sysfs", "sysfs", sys_opts),
    ];
    let mut out: Vec<Value> = standard
        .iter()
        .filter(|(dest, ..)| !spec.mounts.iter().any(|m| m.destination == *dest))
        .map(|(dest, typ, src, opts)| {
            json!({"destination": dest, "type": typ, "source": src, "options": opts})
        })
        .collect();
    for m in &spec.mounts {
        out.push(match &m.kind {
            MountKind::Bind { readonly } => {
                let mut opts = vec!["rbind", "rprivate"];
                if *readonly {
                    opts.push("ro");
                }
                json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts})
            }
            MountKind::Tmpfs { size } => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "mode=1777".to_string(),
                ];
                if let Some(size) = size {
                    opts.push(format!("size={size}"));
                }
                json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": opts})
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{MountSpec, Resources, Security};
    use std::path::PathBuf;

    fn base() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            layers: vec![PathBuf::from("/layers/0")],
            args: vec!["sh".into()],
            log_path: PathBuf::from("/logs/0.log"),
            hostname: "web".into(),
            ..Default::default()
        }
    }

    fn config(spec: &ContainerSpec) -> Value {
        oci_config(spec, Path::new("rootfs"), false).unwrap()
    }

    #[test]
    fn secure_defaults() {
        let c = config(&base());
        let linux = &c["linux"];
        assert_eq!(
            linux["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert_eq!(linux["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(linux["readonlyPaths"], json!(READONLY_PATHS));
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(linux["cgroupsPath"], "/skiff/c1");
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(
            c["process"]["capabilities"]["effective"],
            json!(DEFAULT_CAPABILITIES)
        );
        assert_eq!(c["process"]["capabilities"].get("inheritable"), None);
        let env = c["process"]["env"].as_array().unwrap();
        assert_eq!(env[0], DEFAULT_PATH);
        assert!(env.contains(&json!("HOSTNAME=web")));
        let types: Vec<&str> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network"]);
        let sys = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn privileged_lifts_the_defaults() {
        let mut s = base();
        s.security.privileged = true;
        let c = config(&s);
        assert_eq!(
            c["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert!(c["linux"].get("seccomp").is_none());
        assert!(c["linux"].get("maskedPaths").is_none());
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
    }

    #[test]
    fn capability_add_and_drop() {
        type Names = &'static [&'static str];
        let cases: &[(Names, Names, Names, Names)] = &[
            // add, drop, must contain, must not contain
            (
                &["NET_ADMIN"],
                &["chown"],
                &["CAP_NET_ADMIN", "CAP_KILL"],
                &["CAP_CHOWN"],
            ),
            (
                &["CAP_SYS_TIME"],
                &["ALL"],
                &["CAP_SYS_TIME"],
                &["CAP_KILL"],
            ),
            (&["ALL"], &[], &["CAP_SYS_ADMIN", "CAP_CHOWN"], &[]),
        ];
        for (add, drop, has, lacks) in cases {
            let mut s = base();
            s.security = Security {
                add_capabilities: add.iter().map(|c| c.to_string()).collect(),
                drop_capabilities: drop.iter().map(|c| c.to_string()).collect(),
                ..Security::default()
            };
            let caps = capabilities(&s).unwrap();
            for c in *has {
                assert!(caps.iter().any(|x| x == c), "{add:?} {drop:?}: missing {c}");
            }
            for c in *lacks {
                assert!(!caps.iter().any(|x| x == c), "{add:?} {drop:?}: has {c}");
            }
        }
        let mut s = base();
        s.security.add_capabilities = vec!["FLY".into()];
        assert_eq!(capabilities(&s).unwrap_err(), "unknown capability \"FLY\"");
    }

    #[test]
    fn resources_mounts_and_netns() {
        let mut s = base();
        s.resources = Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
        };
        s.netns = Some(PathBuf::from("/run/netns/p1"));
        s.mounts = vec![
            MountSpec {
                destination: "/etc/hosts".into(),
                source: PathBuf::from("/pods/p1/hosts"),
                kind: MountKind::Bind { readonly: true },
            },
            MountSpec {
                destination: "/dev/shm".into(),
                source: PathBuf::new(),
                kind: MountKind::Tmpfs {
                    size: Some(1 << 20),
                },
            },
        ];
        let c = config(&s);
        let res = &c["linux"]["resources"];
        assert_eq!(res["memory"]["limit"], 64 << 20);
        assert_eq!(
            res["cpu"],
            json!({"shares": 512, "quota": 50000, "period": 100000})
        );
        assert_eq!(res["pids"]["limit"], 100);
        assert!(
            c["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network", "path": "/run/netns/p1"}))
        );
        let mounts = c["mounts"].as_array().unwrap();
        let shm: Vec<&Value> = mounts
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1, "the kubelet's /dev/shm replaces the default");
        assert!(
            shm[0]["options"]
                .as_array()
                .unwrap()
                .contains(&json!("size=1048576"))
        );
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(hosts["options"], json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn rejects_bad_specs() {
        type Edit = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.args.clear()), "no command"),
            (Box::new(|s| s.layers.clear()), "no image layers"),
            (Box::new(|s| s.cwd = "tmp".into()), "working directory"),
            (Box::new(|s| s.env = vec!["NOVALUE".into()]), "NAME=value"),
            (
                Box::new(|s| s.resources.memory_limit = Some(0)),
                "memory limit",
            ),
            (
                Box::new(|s| s.cgroup_parent = "/a/../..".into()),
                "cgroup parent",
            ),
            (
                Box::new(|s| {
                    s.mounts = vec![MountSpec {
                        destination: "/x/../../etc".into(),
                        source: PathBuf::from("/tmp"),
                        kind: MountKind::Bind { readonly: false },
                    }]
                }),
                "mount destination",
            ),
        ];
        for (edit, want) in cases {
            let mut s = base();
            edit(&mut s);
            let err = oci_config(&s, Path::new("rootfs"), false).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
