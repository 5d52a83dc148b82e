//! The etcd v3.4-compatible gRPC API, served on each node's client port.
pub mod pb;
