//! The container runtime (containerd's role, in-process): OCI images imported or pulled into a
//! content store and unpacked once per layer (`image`), and containers run by youki's
//! `libcontainer` inside a small single-threaded shim process per container (`container`), so
//! they outlive the agent. The runtime never talks to the API server; the kubelet does.

pub mod container;
pub mod image;
