//! Containers: OCI spec with secure defaults, the shim process, lifecycle, exec, logs.
