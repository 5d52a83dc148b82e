//! Settings of the etcd API's gRPC server that matter under `etcdctl check perf`.
//!
//! Client connections always have `TCP_NODELAY` (as Go's, and so etcd's, do). Without it a
//! small reply written in more than one piece waited for the client's delayed ACK: 40 ms
//! per Range on a busy connection, 4,500 reads/s where etcd did 20,000 (docs/etcdperf.md,
//! session 10).
//!
//! Experiment knobs (environment variables read at start):
//! `SYNOD_ETCD_ADAPTIVE_WINDOW=1`, `SYNOD_ETCD_STREAM_WINDOW`, `SYNOD_ETCD_CONN_WINDOW`,
//! `SYNOD_ETCD_MAX_STREAMS`.

fn env_flag(name: &str) -> bool {
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

/// The accepted client connections of `listener`, each with `TCP_NODELAY` set.
pub(crate) fn client_connections(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(stream) = &conn {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY on a client connection");
                }
            }
            conn
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_connections_do_not_wait_to_coalesce_small_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(client_connections(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = tokio_stream::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        assert!(accepted.nodelay().unwrap(), "Nagle's algorithm is still on");
    }
}
