//! The accepting side: TLS, the acceptor's half of the handshake, and hand-over of the
//! connection to the peer's task.

use super::frame::{Frame, Hello, PROTOCOL_VERSION};
use super::handshake::{check_as_acceptor, HandshakeError};
use super::peer::{
    established, handshake_framed, read_hello, send_reject, BoxIo, Established, LinkError,
};
use super::tls::check_peer_identity;
use super::Core;
use futures::SinkExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use synod_core::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Inbound connections that may be in their handshake at once; more are closed at once,
/// so a flood of idle sockets cannot exhaust memory or file descriptors for long.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// Where the listener hands each accepted connection: the peer tasks of lower ids.
pub(crate) type Routes = BTreeMap<NodeId, mpsc::Sender<Established>>;

pub(crate) async fn run_listener(core: Arc<Core>, listener: TcpListener, routes: Routes) {
    let routes = Arc::new(routes);
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            _ = core.cancel.cancelled() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        core.listener_counters.reject(format!(
                            "{remote}: more than {MAX_PENDING_HANDSHAKES} handshakes pending"
                        ));
                        continue;
                    };
                    let core = core.clone();
                    let routes = routes.clone();
                    handshakes.spawn(async move {
                        let _permit = permit;
                        handle_inbound(&core, &routes, tcp, remote).await;
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!(error = %e, "transport: accept failed");
                    tokio::select! {
                        _ = core.cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    handshakes.shutdown().await;
}

async fn handle_inbound(core: &Core, routes: &Routes, tcp: TcpStream, remote: SocketAddr) {
    let limit = core.config.handshake_timeout;
    let outcome = tokio::time::timeout(limit, accept(core, tcp, remote))
        .await
        .unwrap_or(Err(LinkError::Timeout(limit)));
    let (from, conn) = match outcome {
        Ok(ok) => ok,
        Err(e) => {
            warn!(node = %core.config.node_id, %remote, error = %e, "transport: refused an inbound connection");
            core.listener_counters.reject(format!("{remote}: {e}"));
            return;
        }
    };
    let Some(route) = routes.get(&from) else {
        // check_as_acceptor admits only lower configured peers, which all have a route.
        debug!(%from, "transport: no route for an accepted peer");
        return;
    };
    info!(node = %core.config.node_id, peer = %from, %remote, "transport: accepted a connection");
    tokio::select! {
        _ = core.cancel.cancelled() => {}
        _ = route.send(conn) => {}
    }
}

/// TLS, then read the dialer's `Hello`, check it, and answer with ours.
async fn accept(
    core: &Core,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<(NodeId, Established), LinkError> {
    let config = &core.config;
    tcp.set_nodelay(true).map_err(LinkError::Io)?;
    let (io, certs): (BoxIo, _) = match &core.tls {
        None => (Box::new(tcp), None),
        Some(tls) => {
            let stream = tls.acceptor.accept(tcp).await.map_err(LinkError::Tls)?;
            let certs = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            (Box::new(stream), certs)
        }
    };
    let mut framed = handshake_framed(io);
    let result = async {
        let hello = match read_hello(&mut framed).await {
            Ok(hello) => hello,
            Err(LinkError::Handshake(e)) => return Err(e),
            Err(other) => return Ok(Err(other)),
        };
        check_as_acceptor(&hello, &config.cluster_id, config.node_id, &config.peers)?;
        if core.tls.is_some() {
            check_peer_identity(certs.as_deref(), &config.cluster_id, hello.from).map_err(
                |detail| HandshakeError::Identity {
                    claimed: hello.from,
                    cluster: config.cluster_id.clone(),
                    detail,
                },
            )?;
        }
        Ok(Ok(hello))
    }
    .await;
    let hello = match result {
        Ok(Ok(hello)) => hello,
        Ok(Err(link_error)) => return Err(link_error),
        Err(refusal) => {
            send_reject(&mut framed, &refusal).await;
            return Err(refusal.into());
        }
    };
    let ours = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster_id: config.cluster_id.clone(),
        from: config.node_id,
        to: hello.from,
    });
    framed.send(ours).await?;
    Ok((hello.from, established(framed, remote)))
}
