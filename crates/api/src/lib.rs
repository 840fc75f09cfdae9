//! The resource registry and API machinery on Kubernetes objects: which kinds exist, their
//! schemas and OpenAPI, defaulting and validation, patches, server-side apply, protobuf
//! decoding and server-side Tables. Pure functions over `serde_json::Value`; no I/O.

pub mod apply;
pub mod convert;
pub mod defaults;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod table;
pub mod validation;
