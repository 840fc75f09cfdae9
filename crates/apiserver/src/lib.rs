//! The API server: Kubernetes' REST API over HTTPS on top of a `Store`, with discovery,
//! OpenAPI, watches, patches, server-side apply, Tables, authentication and admission.
//!
//! Only this crate touches the store; everything else in skiff is an API client.

pub mod admission;
pub mod auth;
pub mod client;
pub mod codec;
pub mod crd;
pub mod discovery;
pub mod error;
pub mod eviction;
pub mod http;
pub mod loopback;
pub mod metrics;
pub mod node_proxy;
pub mod object;
pub mod pki;
pub mod project;
pub mod request;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod server;
pub mod service_alloc;
pub mod subresources;
pub mod system_services;
pub mod tables;
pub mod virtual_resources;
pub mod watch;

pub use server::{Config, Running, start};
