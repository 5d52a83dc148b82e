//! Settings of the etcd API's gRPC server that matter under `etcdctl check perf`.
//!
//! Experiment knobs (environment variables read at start): `SYNOD_ETCD_NODELAY=1`,
//! `SYNOD_ETCD_ADAPTIVE_WINDOW=1`, `SYNOD_ETCD_STREAM_WINDOW`, `SYNOD_ETCD_CONN_WINDOW`,
//! `SYNOD_ETCD_MAX_STREAMS`.

pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v == "true")
}

fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.parse().ok()
}

/// The tonic server builder with the tuned HTTP/2 settings.
pub(crate) fn server_builder() -> tonic::transport::Server {
    let mut b = tonic::transport::Server::builder();
    if env_flag("SYNOD_ETCD_ADAPTIVE_WINDOW") {
        b = b.http2_adaptive_window(Some(true));
    }
    if let Some(w) = env_u32("SYNOD_ETCD_STREAM_WINDOW") {
        b = b.initial_stream_window_size(w);
    }
    if let Some(w) = env_u32("SYNOD_ETCD_CONN_WINDOW") {
        b = b.initial_connection_window_size(w);
    }
    if let Some(n) = env_u32("SYNOD_ETCD_MAX_STREAMS") {
        b = b.max_concurrent_streams(n);
    }
    b
}
