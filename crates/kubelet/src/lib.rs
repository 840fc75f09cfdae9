//! The node agent (kubelet role): joins a cluster with a k3s-style token, then runs this
//! machine as a node (`node`: real containers through the `runtime` crate, pod networks through
//! the `network` crate, the kubelet API in `server`) or plays the kubelet for many simulated
//! nodes (`simulated`). It is an API client only; it never touches the store.

pub mod join;
pub mod node;
mod node_status;
pub mod quantity;
pub mod server;
pub mod simulated;

pub use join::{JoinError, JoinToken, Joined, join};
/// The shutdown signal `simulated::run` takes, re-exported so callers need not depend on
/// tokio-util themselves.
pub use tokio_util::sync::CancellationToken;
