//! What the in-process control loops (the controller manager and the scheduler) share as API
//! clients: Lease-based leader election and shared informers.

pub mod informer;
pub mod leader;
