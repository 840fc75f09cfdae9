//! skiff's RuntimeDefault seccomp profile.
//!
//! Choice: a deny list, not docker's allow list. Everything is allowed except the syscalls
//! docker's default profile refuses to unprivileged containers because they reach kernel state
//! that is not namespaced (modules, keyrings, clocks, swap, reboot, kexec, BPF, perf, io_uring,
//! userfaultfd, handle-based opens) or escape the container's namespaces (mount APIs, setns,
//! unshare, clone with namespace flags); those fail with EPERM. `clone3` fails with ENOSYS, as
//! in docker, so libcs fall back to `clone`, whose flags a filter can inspect. A deny list
//! keeps new, harmless syscalls working (no breakage on new libcs), at the price that a new
//! dangerous syscall is allowed until listed; the reduced capability set and the device cgroup
//! still stand in front of most of them. `ptrace` and `process_vm_*` stay allowed, like docker
//! on kernels >= 4.8, so debuggers work inside a container.

use serde_json::{Value, json};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscalls refused with EPERM.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "_sysctl",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
/// CLONE_NEWNET, CLONE_NEWTIME.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
    0x0000_0080,
];

/// Architectures whose syscall ABIs the filter covers (all a process here can enter with).
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        vec!["SCMP_ARCH_NATIVE"]
    }
}

/// The profile as the OCI spec's `linux.seccomp`.
pub(crate) fn runtime_default() -> Value {
    let mut syscalls = vec![
        json!({"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    // `clone(flags, …)`: flags are argument 0 on every architecture listed above. One rule per
    // flag: a rule's conditions are ANDed, separate rules ORed.
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_parses_as_an_oci_seccomp_section() {
        let parsed: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(runtime_default()).unwrap();
        let rules = parsed.syscalls().as_ref().unwrap();
        assert!(rules[0].names().iter().any(|n| n == "mount"));
        assert_eq!(rules.len(), 2 + CLONE_NAMESPACE_FLAGS.len());
    }
}
