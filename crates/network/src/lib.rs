//! The pod network (the CNI bridge plugin's role): a network namespace per pod with loopback and
//! an address on a node-local bridge, so that probes, port-forward and pod IPs work. Later (issue
//! 5) also the routes between nodes, the service proxy and cluster DNS.
//!
//! # Layout
//! One bridge per node (`skiff0` by default) holds the gateway, the first host address of the
//! node's pod CIDR (`node.spec.podCIDR`). Each pod gets a namespace, kept alive by a bind mount
//! on `<netns_dir>/<id>` like `ip netns add`, with `lo` up and `eth0`: one end of a veth pair
//! whose other end (`veth` + 8 hex digits of a hash of the id) is a port of the bridge. The pod
//! has an address from the subnet and a default route via the gateway. Pods on one node reach
//! each other over the bridge and the node reaches them through the bridge's address.
//!
//! Deliberately absent: IP forwarding, NAT and any route towards the uplink; issue 5 decides
//! those, and adds routes to other nodes' pod CIDRs via their addresses (host-gw) next to the
//! bridge's own connected route. [`BridgeConfig::node_netns`] puts the bridge in another
//! namespace, which is how `skiff cluster` nodes and the tests run without touching the host.
//!
//! # Netlink, not `ip`
//! Links, addresses and routes are set with `rtnetlink`, in process: no fork and exec per step
//! (a setup is about a dozen of them), errors come back as errno values that say exactly what
//! failed (a missing link is `ENODEV`, not a parsed message), and idempotency checks read
//! structured replies. A netlink socket works on the namespace it was created in, so the crate
//! makes the socket on a short-lived thread that entered the target namespace and drives it from
//! the caller's tokio runtime; the pod's veth end is created directly inside the pod namespace
//! (`IFLA_NET_NS_FD` on the peer), so it never exists in the node's namespace.
//!
//! # State and crashes
//! Each sandbox has a record (`<state_dir>/sandboxes/<id>.json`: address, host veth, namespace
//! file), written atomically (not synced: see [`store`] for why) *before* anything is built
//! and deleted *after* everything is torn down. An address is allocated exactly while a record
//! holds it; the allocator goes round-robin from the last address handed out
//! (`<state_dir>/last-reserved`, a hint). An exclusive `flock` on `<state_dir>/lock` refuses a
//! second process. Operations on one id are serialized; different ids run concurrently. On start,
//! [`PodNetwork::new`] completes recorded sandboxes whose namespace exists, removes those whose
//! namespace is gone (freeing the address), and removes namespace files and bridge ports that
//! no record names.
//!
//! The tokio runtime that calls [`PodNetwork::new`] drives its netlink connection to the node's
//! namespace: use the `PodNetwork` from that runtime. Tear a sandbox down after its containers
//! are gone; a process still inside keeps the namespace alive, cut off from the bridge. Pod
//! namespaces are mounted in a shared mount point so that containers whose mounts are `rslave`
//! (runc's default) lose their copy when teardown unmounts the original.
//!
//! # Tests
//! `cargo test -p network`, as root (needs `nsenter`, `ip` and `/bin/busybox`). Every test makes
//! its own "node" namespace in a temporary directory and puts the bridge there, so nothing
//! reaches the host's namespace; a drop guard unmounts everything even when a test fails. The
//! latency table: `cargo test -p network --release --test latency -- --nocapture`.

pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod node;
mod pod;
pub mod store;

pub use ipam::Ipv4Cidr;
pub use netns::{connect_in, run_in, run_in_async};
pub use pod::{
    BridgeConfig, Error, POD_IFNAME, PodNetwork, Result, Sandbox, validate_id, validate_ifname,
};
