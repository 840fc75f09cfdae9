//! The node agent (kubelet role): joins a cluster with a k3s-style token and, for now, plays
//! the kubelet for simulated nodes. It is an API client only; it never touches the store.

pub mod join;
pub mod quantity;
pub mod server;
pub mod node;
pub mod simulated;

pub use join::{JoinError, JoinToken, Joined, join};
/// The shutdown signal `simulated::run` takes, re-exported so callers need not depend on
/// tokio-util themselves.
pub use tokio_util::sync::CancellationToken;
