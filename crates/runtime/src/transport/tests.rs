//! End-to-end tests of the transport over loopback (127.0.0.1, ephemeral ports only).
//!
//! Fake peers speak the wire protocol by hand with [`FrameCodec`], to send what a correct
//! node never would. Every wait is bounded, so a failure is a timeout, never a hang.

use super::certs::{init_cluster_certs, load_certs, load_key, NodeCertSpec};
use super::*;
use futures::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::task::{Context, Poll};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

const CLUSTER: &str = "test";
const WAIT: Duration = Duration::from_secs(10);
/// An address never dialed: a node only dials higher ids, so lower ids' addresses are
/// placeholders (loopback, so that insecure mode accepts them).
const NEVER_DIALED: &str = "127.0.0.1:9";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

fn cluster_certs(ids: &[u32]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs: Vec<NodeCertSpec> = ids.iter().map(|&id| NodeId(id).into()).collect();
    init_cluster_certs(dir.path(), CLUSTER, &specs).expect("certificates");
    dir
}

fn mutual(dir: &TempDir, id: u32) -> TlsMode {
    TlsMode::Mutual(TlsFiles::in_dir(dir.path(), NodeId(id)))
}

/// A configuration with short timeouts, so that reconnects and failures show quickly.
fn config(id: u32, peers: BTreeMap<NodeId, SocketAddr>, tls: TlsMode) -> TransportConfig {
    let mut config = TransportConfig::new(CLUSTER, NodeId(id), loopback(), peers, tls);
    config.backoff = BackoffConfig {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(200),
        seed: Some(u64::from(id)),
    };
    config.handshake_timeout = Duration::from_secs(3);
    config.keepalive_interval = Duration::from_millis(200);
    config.idle_timeout = Duration::from_secs(3);
    config.stream_stall_timeout = Duration::from_secs(3);
    config
}

struct Node {
    handle: TransportHandle,
    inbound: mpsc::Receiver<Inbound>,
}

/// Start the nodes of a cluster of `ids`.
async fn start_nodes(
    ids: &[u32],
    tls: impl Fn(u32) -> TlsMode,
    tweak: impl Fn(&mut TransportConfig),
) -> BTreeMap<u32, Node> {
    start_some(ids, ids, tls, tweak).await
}

/// Start the `running` nodes of a cluster of `cluster` nodes, highest id first: each
/// dials only higher ids, whose addresses are known by then. The others are left to fake
/// peers (or to nobody).
async fn start_some(
    cluster: &[u32],
    running: &[u32],
    tls: impl Fn(u32) -> TlsMode,
    tweak: impl Fn(&mut TransportConfig),
) -> BTreeMap<u32, Node> {
    let mut nodes: BTreeMap<u32, Node> = BTreeMap::new();
    let mut sorted = running.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    for &id in &sorted {
        let peers = cluster
            .iter()
            .filter(|&&other| other != id)
            .map(|&other| {
                let addr = match nodes.get(&other) {
                    Some(node) => node.handle.local_addr(),
                    None => NEVER_DIALED.parse().expect("valid address"),
                };
                (NodeId(other), addr)
            })
            .collect();
        let mut config = config(id, peers, tls(id));
        tweak(&mut config);
        let (handle, inbound) = Transport::start(config).await.expect("transport starts");
        nodes.insert(id, Node { handle, inbound });
    }
    nodes
}

async fn next_inbound(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    timeout(WAIT, rx.recv())
        .await
        .expect("something arrives in time")
        .expect("inbound channel open")
}

async fn next_message(rx: &mut mpsc::Receiver<Inbound>) -> (NodeId, ServiceId, Bytes) {
    match next_inbound(rx).await {
        Inbound::Message {
            from,
            service,
            payload,
        } => (from, service, payload),
        Inbound::Stream(s) => panic!("expected a message, got a stream from {}", s.from()),
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

fn hello(from: u32, to: u32) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        cluster_id: CLUSTER.to_owned(),
        from: NodeId(from),
        to: NodeId(to),
    }
}

/// Dial `addr` in plaintext, send `hello`, and return the connection and the answer.
async fn fake_dial(addr: SocketAddr, hello: Hello) -> (Framed<TcpStream, FrameCodec>, Frame) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(tcp, FrameCodec::default());
    framed.send(Frame::Hello(hello)).await.expect("send Hello");
    let answer = timeout(WAIT, framed.next())
        .await
        .expect("answer in time")
        .expect("a frame before EOF")
        .expect("a valid frame");
    (framed, answer)
}

fn expect_reject(frame: Frame, code: RejectCode, text: &str) {
    match frame {
        Frame::Reject { code: got, message } => {
            assert_eq!(got, code, "{message}");
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
}

/// A TLS client outside the transport, to present unusual credentials.
fn raw_connector(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca).expect("CA") {
        roots.add(cert).expect("CA parses");
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert).expect("cert"), load_key(key).expect("key"))
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn three_nodes_exchange_messages_over_mutual_tls() {
    let certs = cluster_certs(&[1, 2, 3]);
    let mut nodes = start_nodes(&[1, 2, 3], |id| mutual(&certs, id), |_| {}).await;
    for (&a, node) in &nodes {
        for b in [1, 2, 3].into_iter().filter(|&b| b != a) {
            let greeting = Bytes::from(format!("n{a} greets n{b}"));
            node.handle
                .send(NodeId(b), ServiceId(1), greeting)
                .await
                .expect("queued");
        }
    }
    for i in 0..100u32 {
        nodes[&1]
            .handle
            .send(
                NodeId(3),
                ServiceId(2),
                Bytes::from(i.to_be_bytes().to_vec()),
            )
            .await
            .expect("queued");
    }
    for (&b, node) in nodes.iter_mut() {
        let mut greeted_by = Vec::new();
        let mut numbers = Vec::new();
        let expected = if b == 3 { 102 } else { 2 };
        for _ in 0..expected {
            let (from, service, payload) = next_message(&mut node.inbound).await;
            match service {
                ServiceId(1) => {
                    assert_eq!(payload, format!("{from} greets n{b}").as_bytes());
                    greeted_by.push(from);
                }
                ServiceId(2) => {
                    assert_eq!(from, NodeId(1));
                    let raw: [u8; 4] = payload[..].try_into().expect("four bytes");
                    numbers.push(u32::from_be_bytes(raw));
                }
                other => panic!("unexpected service {other}"),
            }
        }
        greeted_by.sort();
        let others: Vec<NodeId> = [1, 2, 3]
            .into_iter()
            .filter(|&x| x != b)
            .map(NodeId)
            .collect();
        assert_eq!(greeted_by, others, "n{b}");
        if b == 3 {
            assert_eq!(
                numbers,
                (0..100).collect::<Vec<_>>(),
                "in order on one connection"
            );
        }
    }
    let n1 = nodes[&1].handle.clone();
    eventually("n1 counts 101 messages sent to n3", || {
        n1.stats().peers[&NodeId(3)].messages_sent == 101
    })
    .await;
    let stats = nodes[&3].handle.stats();
    let from_n1 = &stats.peers[&NodeId(1)];
    assert!(from_n1.connected);
    assert_eq!(from_n1.messages_received, 101);
    assert!(from_n1.bytes_received > 101 * 7, "{from_n1:?}");
    assert_eq!(stats.rejected_connections, 0, "{:?}", stats.last_rejection);
    for node in nodes.values() {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_cluster_id_is_refused_on_both_sides() {
    let (n2, mut n2_inbound) = Transport::start(config(
        2,
        BTreeMap::from([(NodeId(1), NEVER_DIALED.parse().unwrap())]),
        TlsMode::Insecure,
    ))
    .await
    .unwrap();
    let mut other = config(
        1,
        BTreeMap::from([(NodeId(2), n2.local_addr())]),
        TlsMode::Insecure,
    );
    other.cluster_id = "other".into();
    let (n1, _n1_inbound) = Transport::start(other).await.unwrap();
    n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"hi"))
        .await
        .unwrap();

    eventually("n2 refuses n1", || n2.stats().rejected_connections >= 1).await;
    let refusal = n2.stats().last_rejection.expect("a reason");
    assert!(
        refusal.contains("cluster id mismatch") && refusal.contains("\"other\""),
        "{refusal}"
    );
    eventually("n1 records the refusal", || {
        n1.stats().peers[&NodeId(2)].last_error.is_some()
    })
    .await;
    let error = n1.stats().peers[&NodeId(2)].last_error.clone().unwrap();
    assert!(
        error.contains("rejected the handshake (cluster mismatch)"),
        "{error}"
    );
    assert!(!n1.is_connected(NodeId(2)));
    assert!(n1.stats().peers[&NodeId(2)].connect_failures >= 1);
    assert!(timeout(Duration::from_millis(300), n2_inbound.recv())
        .await
        .is_err());
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let good = cluster_certs(&[1, 2]);
    let rogue = cluster_certs(&[1]);
    let (n2, mut n2_inbound) = Transport::start(config(
        2,
        BTreeMap::from([(NodeId(1), NEVER_DIALED.parse().unwrap())]),
        mutual(&good, 2),
    ))
    .await
    .unwrap();
    // n1 trusts the right CA but holds a certificate signed by another one.
    let files = TlsFiles {
        ca: good.path().join("ca.pem"),
        ..TlsFiles::in_dir(rogue.path(), NodeId(1))
    };
    let (n1, _n1_inbound) = Transport::start(config(
        1,
        BTreeMap::from([(NodeId(2), n2.local_addr())]),
        TlsMode::Mutual(files),
    ))
    .await
    .unwrap();
    n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"let me in"))
        .await
        .unwrap();
    eventually("n2 refuses the rogue certificate", || {
        n2.stats().rejected_connections >= 1
    })
    .await;
    let refusal = n2.stats().last_rejection.unwrap();
    assert!(refusal.contains("TLS handshake failed"), "{refusal}");
    eventually("n1 records the failure", || {
        n1.stats().peers[&NodeId(2)].connect_failures >= 1
    })
    .await;
    assert!(!n1.is_connected(NodeId(2)));
    assert!(!n2.is_connected(NodeId(1)));
    assert!(timeout(Duration::from_millis(300), n2_inbound.recv())
        .await
        .is_err());
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let certs = cluster_certs(&[1, 2]);
    let nodes = start_some(&[1, 2], &[2], |id| mutual(&certs, id), |_| {}).await;
    let n2 = &nodes[&2].handle;
    let connector = raw_connector(&certs.path().join("ca.pem"), None);
    let tcp = TcpStream::connect(n2.local_addr()).await.unwrap();
    let name = tls::server_name(CLUSTER, NodeId(2)).unwrap();
    // In TLS 1.3 the client may finish before the server has judged its (missing)
    // certificate; either the handshake or the first read must fail.
    if let Ok(stream) = connector.connect(name, tcp).await {
        let mut framed = Framed::new(stream, FrameCodec::default());
        let _ = framed.send(Frame::Hello(hello(1, 2))).await;
        let answer = timeout(WAIT, framed.next()).await.expect("closed in time");
        assert!(
            !matches!(answer, Some(Ok(Frame::Hello(_)))),
            "a client without a certificate got a Hello: {answer:?}"
        );
    }
    eventually("n2 refuses the anonymous client", || {
        n2.stats().rejected_connections >= 1
    })
    .await;
    let refusal = n2.stats().last_rejection.unwrap();
    assert!(refusal.contains("TLS handshake failed"), "{refusal}");
    n2.shutdown().await;
}

#[tokio::test]
async fn node_claiming_another_nodes_id_is_refused() {
    let certs = cluster_certs(&[1, 2, 3]);
    let nodes = start_some(&[1, 2, 3], &[2], |id| mutual(&certs, id), |_| {}).await;
    let n2 = &nodes[&2].handle;
    // Holds n3's valid certificate, but claims to be n1.
    let n3 = TlsFiles::in_dir(certs.path(), NodeId(3));
    let connector = raw_connector(&n3.ca, Some((&n3.cert, &n3.key)));
    let tcp = TcpStream::connect(n2.local_addr()).await.unwrap();
    let name = tls::server_name(CLUSTER, NodeId(2)).unwrap();
    let stream = connector
        .connect(name, tcp)
        .await
        .expect("TLS with a valid cert");
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed.send(Frame::Hello(hello(1, 2))).await.unwrap();
    let answer = timeout(WAIT, framed.next())
        .await
        .expect("answer in time")
        .expect("a frame")
        .expect("valid");
    expect_reject(answer, RejectCode::Identity, "does not name node n1");
    eventually("n2 logs the impostor", || {
        n2.stats().rejected_connections >= 1
    })
    .await;
    let refusal = n2.stats().last_rejection.unwrap();
    assert!(refusal.contains("n1.test.synod"), "{refusal}");
    assert!(!n2.is_connected(NodeId(1)));
    n2.shutdown().await;
}

#[tokio::test]
async fn a_resumed_tls_session_keeps_the_peer_identity() {
    let certs = cluster_certs(&[1, 2]);
    let nodes = start_some(&[1, 2], &[2], |id| mutual(&certs, id), |_| {}).await;
    let n2 = &nodes[&2].handle;
    let n1 = TlsFiles::in_dir(certs.path(), NodeId(1));
    // One client configuration, hence one session cache, for both connections.
    let connector = raw_connector(&n1.ca, Some((&n1.cert, &n1.key)));
    for round in 0..2 {
        let tcp = TcpStream::connect(n2.local_addr()).await.unwrap();
        let name = tls::server_name(CLUSTER, NodeId(2)).unwrap();
        let stream = connector.connect(name, tcp).await.expect("TLS");
        let mut framed = Framed::new(stream, FrameCodec::default());
        framed.send(Frame::Hello(hello(1, 2))).await.unwrap();
        let answer = timeout(WAIT, framed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer, Frame::Hello(hello(2, 1)), "round {round}");
        if round == 1 {
            let kind = framed.get_ref().get_ref().1.handshake_kind();
            assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
        }
        eventually("n2 is connected to n1", || n2.is_connected(NodeId(1))).await;
        drop(framed);
        eventually("n2 sees n1 go", || !n2.is_connected(NodeId(1))).await;
    }
    assert_eq!(n2.stats().rejected_connections, 0);
    n2.shutdown().await;
}

#[tokio::test]
async fn dialer_refuses_an_acceptor_whose_certificate_names_another_node() {
    let certs = cluster_certs(&[1, 2, 3]);
    let nodes = start_some(&[1, 2, 3], &[3], |id| mutual(&certs, id), |_| {}).await;
    // n1 believes n2 lives where n3 listens.
    let (n1, _inbound) = Transport::start(config(
        1,
        BTreeMap::from([
            (NodeId(2), nodes[&3].handle.local_addr()),
            (NodeId(3), nodes[&3].handle.local_addr()),
        ]),
        mutual(&certs, 1),
    ))
    .await
    .unwrap();
    timeout(WAIT, n1.wait_connected(NodeId(3)))
        .await
        .expect("the real n3 is reachable")
        .unwrap();
    eventually("n1 refuses the impostor of n2", || {
        n1.stats().peers[&NodeId(2)].connect_failures >= 1
    })
    .await;
    let error = n1.stats().peers[&NodeId(2)].last_error.clone().unwrap();
    assert!(
        error.contains("TLS handshake failed") && error.contains("n2.test.synod"),
        "{error}"
    );
    assert!(!n1.is_connected(NodeId(2)));
    n1.shutdown().await;
    nodes[&3].handle.shutdown().await;
}

#[tokio::test]
async fn a_stream_fails_when_its_connection_is_lost() {
    let certs = cluster_certs(&[1, 2]);
    let mut nodes = start_nodes(&[1, 2], |id| mutual(&certs, id), |_| {}).await;
    let n1 = nodes[&1].handle.clone();
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .unwrap()
        .unwrap();
    let sender = {
        let n1 = n1.clone();
        tokio::spawn(async move {
            let source = PatternReader::new(64 << 20);
            n1.send_stream(NodeId(2), ServiceId(9), source, None).await
        })
    };
    let n2 = nodes.remove(&2).unwrap();
    let mut inbound = n2.inbound;
    let Inbound::Stream(incoming) = next_inbound(&mut inbound).await else {
        panic!("expected a stream");
    };
    // The receiver goes away mid-stream, without reading.
    n2.handle.shutdown().await;
    let result = timeout(WAIT, sender)
        .await
        .expect("the sender gives up in time");
    assert_eq!(result.unwrap(), Err(StreamError::ConnectionLost));
    let mut incoming = incoming;
    let mut outcome = Ok(None);
    for _ in 0..8 {
        outcome = incoming.next_chunk().await;
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, Err(StreamError::ConnectionLost));
    n1.shutdown().await;
}

#[tokio::test]
async fn insecure_mode_is_refused_off_loopback() {
    let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut listen_anywhere = config(1, BTreeMap::new(), TlsMode::Insecure);
    listen_anywhere.listen = public;
    let err = Transport::start(listen_anywhere).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Config(m) if m.contains("only on loopback") && m.contains("0.0.0.0")),
        "{err}"
    );
    let remote_peer = config(
        1,
        BTreeMap::from([(NodeId(2), "10.1.2.3:7000".parse().unwrap())]),
        TlsMode::Insecure,
    );
    let err = Transport::start(remote_peer).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("node n2 has address 10.1.2.3:7000"),
        "{err}"
    );
    // The same addresses are fine with TLS, as far as validation goes.
    let mut tls = config(
        1,
        BTreeMap::from([(NodeId(2), "10.1.2.3:7000".parse().unwrap())]),
        TlsMode::Mutual(TlsFiles::in_dir(Path::new("/nonexistent"), NodeId(1))),
    );
    tls.listen = public;
    tls.validate().expect("TLS may listen anywhere");
}

#[test]
fn config_validation_names_the_problem() {
    let base = || config(1, BTreeMap::new(), TlsMode::Insecure);
    base().validate().expect("the test configuration is valid");
    type Tweak = Box<dyn Fn(&mut TransportConfig)>;
    let cases: Vec<(Tweak, &str)> = vec![
        (
            Box::new(|c| {
                c.peers.insert(NodeId(1), loopback());
            }),
            "lists itself",
        ),
        (
            Box::new(|c| c.cluster_id = "Bad.Id".into()),
            "invalid cluster id",
        ),
        (Box::new(|c| c.queue_capacity = 0), "at least 1"),
        (Box::new(|c| c.max_frame = 100), "max_frame"),
        (Box::new(|c| c.stream_chunk = c.max_frame), "stream_chunk"),
        (
            Box::new(|c| c.idle_timeout = c.keepalive_interval),
            "at least twice keepalive_interval",
        ),
        (
            Box::new(|c| c.backoff.base = Duration::from_secs(60)),
            "exceeds backoff.cap",
        ),
    ];
    for (tweak, text) in cases {
        let mut config = base();
        tweak(&mut config);
        let err = config.validate().expect_err(text);
        assert!(err.to_string().contains(text), "{err} lacks {text:?}");
    }
}

#[tokio::test]
async fn garbage_on_the_listener_is_refused_and_the_transport_survives() {
    let mut nodes = start_nodes(&[1, 2], |_| TlsMode::Insecure, |_| {}).await;
    let n2_addr = nodes[&2].handle.local_addr();

    // An HTTP request: its first four bytes are a 1.1 GB length prefix.
    let mut tcp = TcpStream::connect(n2_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: synod\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .expect("closed in time")
        .expect("clean close");
    let (frame, _) = decode_frame(&reply, HANDSHAKE_MAX_FRAME).unwrap().unwrap();
    expect_reject(frame, RejectCode::BadHandshake, "exceeds the limit of 4096");

    // Seeded random bytes, and a well-sized frame without the magic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let no_magic = [
        0u8, 0, 0, 16, 1, b'H', b'T', b'T', b'P', 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 2,
    ];
    for garbage in [&noise[..], &no_magic[..]] {
        let mut tcp = TcpStream::connect(n2_addr).await.unwrap();
        let _ = tcp.write_all(garbage).await;
        let mut sink = Vec::new();
        let _ = timeout(WAIT, tcp.read_to_end(&mut sink))
            .await
            .expect("closed");
    }
    let n2 = nodes[&2].handle.clone();
    eventually("three refusals", || n2.stats().rejected_connections >= 3).await;
    assert!(
        n2.stats().last_rejection.unwrap().contains("127.0.0.1"),
        "the log names the remote address"
    );

    // The real peer still gets through.
    nodes[&1]
        .handle
        .send(NodeId(2), ServiceId(3), Bytes::from_static(b"still alive"))
        .await
        .unwrap();
    let n2_node = nodes.get_mut(&2).unwrap();
    let (from, _, payload) = next_message(&mut n2_node.inbound).await;
    assert_eq!((from, &payload[..]), (NodeId(1), &b"still alive"[..]));
    for node in nodes.values() {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn garbage_on_a_tls_listener_is_refused() {
    let certs = cluster_certs(&[1, 2]);
    let nodes = start_some(&[1, 2], &[2], |id| mutual(&certs, id), |_| {}).await;
    let n2 = &nodes[&2].handle;
    let mut tcp = TcpStream::connect(n2.local_addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])
        .await
        .unwrap();
    tcp.write_all(&[0xa5; 4096]).await.unwrap_or(());
    let mut sink = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut sink))
        .await
        .expect("closed");
    eventually("the TLS listener refuses garbage", || {
        n2.stats().rejected_connections >= 1
    })
    .await;
    assert!(n2.stats().last_rejection.unwrap().contains("TLS"));
    n2.shutdown().await;
}

#[tokio::test]
async fn fake_dialers_get_a_reject_naming_the_mismatch() {
    let nodes = start_nodes(&[1, 2, 3], |_| TlsMode::Insecure, |_| {}).await;
    let n2 = nodes[&2].handle.local_addr();
    let mut future = hello(1, 2);
    future.version = PROTOCOL_VERSION + 1;
    let cases = [
        (future, RejectCode::Version, "the peer speaks v2"),
        (
            hello(3, 2),
            RejectCode::WrongDirection,
            "the lower id dials",
        ),
        (
            hello(7, 2),
            RejectCode::UnknownNode,
            "n7 is not a configured peer",
        ),
        (hello(1, 3), RejectCode::WrongNode, "addressed node n3"),
    ];
    for (hello, code, text) in cases {
        let (mut framed, answer) = fake_dial(n2, hello).await;
        expect_reject(answer, code, text);
        let after = timeout(WAIT, framed.next()).await.expect("closed in time");
        assert!(after.is_none(), "the connection is closed after a Reject");
    }
    let n2 = nodes[&2].handle.clone();
    eventually("four refusals", || n2.stats().rejected_connections == 4).await;
    for node in nodes.values() {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn oversize_frame_after_the_handshake_is_refused_and_the_peer_may_return() {
    let mut nodes = start_some(&[1, 2], &[2], |_| TlsMode::Insecure, |_| {}).await;
    let n2 = nodes[&2].handle.clone();
    let (mut framed, answer) = fake_dial(n2.local_addr(), hello(1, 2)).await;
    assert_eq!(answer, Frame::Hello(hello(2, 1)));
    // A length prefix far above the 16 MiB bound, then nothing.
    framed
        .get_mut()
        .write_all(&0x7fff_ffffu32.to_be_bytes())
        .await
        .unwrap();
    let answer = timeout(WAIT, framed.next())
        .await
        .expect("answer in time")
        .expect("a frame")
        .expect("valid");
    expect_reject(
        answer,
        RejectCode::Protocol,
        "exceeds the limit of 16777216",
    );
    eventually("n2 drops the connection", || !n2.is_connected(NodeId(1))).await;
    let error = n2.stats().peers[&NodeId(1)].last_error.clone().unwrap();
    assert!(error.contains("protocol violation"), "{error}");

    // The same peer reconnects and is heard.
    let (mut framed, answer) = fake_dial(n2.local_addr(), hello(1, 2)).await;
    assert_eq!(answer, Frame::Hello(hello(2, 1)));
    framed
        .send(Frame::Data {
            service: ServiceId(4),
            payload: Bytes::from_static(b"sorry"),
        })
        .await
        .unwrap();
    let node = nodes.get_mut(&2).unwrap();
    let (from, service, payload) = next_message(&mut node.inbound).await;
    assert_eq!(
        (from, service, &payload[..]),
        (NodeId(1), ServiceId(4), &b"sorry"[..])
    );
    assert_eq!(n2.stats().peers[&NodeId(1)].reconnects, 1);
    n2.shutdown().await;
}

#[tokio::test]
async fn dialer_reconnects_after_the_peer_restarts() {
    let certs = cluster_certs(&[1, 2]);
    let mut nodes = start_nodes(&[1, 2], |id| mutual(&certs, id), |_| {}).await;
    let n1 = nodes[&1].handle.clone();
    n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"before"))
        .await
        .unwrap();
    let old = nodes.remove(&2).unwrap();
    let mut old_inbound = old.inbound;
    assert_eq!(&next_message(&mut old_inbound).await.2[..], b"before");
    let n2_addr = old.handle.local_addr();
    old.handle.shutdown().await;
    drop(old.handle);
    assert!(
        timeout(WAIT, old_inbound.recv())
            .await
            .expect("ends")
            .is_none(),
        "the inbound channel ends after shutdown"
    );
    eventually("n1 notices", || !n1.is_connected(NodeId(2))).await;

    let mut restarted = config(
        2,
        BTreeMap::from([(NodeId(1), NEVER_DIALED.parse().unwrap())]),
        mutual(&certs, 2),
    );
    restarted.listen = n2_addr;
    let (n2, mut n2_inbound) = Transport::start(restarted).await.expect("same port again");
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .expect("reconnected in time")
        .unwrap();
    n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"after"))
        .await
        .unwrap();
    let (from, _, payload) = next_message(&mut n2_inbound).await;
    assert_eq!((from, &payload[..]), (NodeId(1), &b"after"[..]));
    let stats = n1.stats().peers[&NodeId(2)].clone();
    assert!(stats.reconnects >= 1, "{stats:?}");
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A source of `remaining` pseudo-random bytes that never exist all at once. It records
/// the largest gap between what it has produced and what the receiver has consumed.
struct PatternReader {
    remaining: u64,
    state: u64,
    crc: Arc<AtomicU32>,
    produced: Arc<AtomicU64>,
    consumed: Arc<AtomicU64>,
    max_gap: Arc<AtomicU64>,
    fail_after: Option<u64>,
}

impl PatternReader {
    fn new(len: u64) -> Self {
        Self {
            remaining: len,
            state: 0x2545_f491_4f6c_dd1d,
            crc: Arc::default(),
            produced: Arc::default(),
            consumed: Arc::default(),
            max_gap: Arc::default(),
            fail_after: None,
        }
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let produced = this.produced.load(Ordering::SeqCst);
        if this.fail_after.is_some_and(|limit| produced >= limit) {
            return Poll::Ready(Err(io::Error::other("the disk is on fire")));
        }
        let n = (buf.remaining() as u64).min(this.remaining).min(64 << 10) as usize;
        let dst = buf.initialize_unfilled_to(n);
        for word in dst.chunks_mut(8) {
            this.state ^= this.state << 13;
            this.state ^= this.state >> 7;
            this.state ^= this.state << 17;
            word.copy_from_slice(&this.state.to_le_bytes()[..word.len()]);
        }
        let crc = crc32c::crc32c_append(this.crc.load(Ordering::SeqCst), dst);
        this.crc.store(crc, Ordering::SeqCst);
        buf.advance(n);
        this.remaining -= n as u64;
        let produced = this.produced.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let gap = produced.saturating_sub(this.consumed.load(Ordering::SeqCst));
        this.max_gap.fetch_max(gap, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_64_mib_stream_arrives_incrementally_with_bounded_memory() {
    const TOTAL: u64 = 64 << 20;
    let certs = cluster_certs(&[1, 2]);
    let mut nodes = start_nodes(&[1, 2], |id| mutual(&certs, id), |_| {}).await;
    let n1 = nodes[&1].handle.clone();
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .unwrap()
        .unwrap();
    let source = PatternReader::new(TOTAL);
    let (sent_crc, consumed, max_gap) = (
        source.crc.clone(),
        source.consumed.clone(),
        source.max_gap.clone(),
    );
    let sender = {
        let n1 = n1.clone();
        tokio::spawn(async move {
            n1.send_stream(NodeId(2), ServiceId(9), source, Some(TOTAL))
                .await
        })
    };

    let n2 = nodes.get_mut(&2).unwrap();
    let Inbound::Stream(mut incoming) = next_inbound(&mut n2.inbound).await else {
        panic!("expected a stream first");
    };
    assert_eq!(
        (incoming.from(), incoming.service(), incoming.total_len()),
        (NodeId(1), ServiceId(9), Some(TOTAL))
    );
    let consumer = {
        let consumed = consumed.clone();
        tokio::spawn(async move {
            let (mut chunks, mut crc, mut len) = (0u32, 0u32, 0u64);
            while let Some(chunk) = incoming.next_chunk().await? {
                chunks += 1;
                len += chunk.len() as u64;
                crc = crc32c::crc32c_append(crc, &chunk);
                consumed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                // A consumer slower than the network, as a disk may be.
                sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, StreamError>((chunks, len, crc))
        })
    };

    // A heartbeat sent mid-stream overtakes the rest of the stream.
    eventually("the first chunk is consumed", || {
        consumed.load(Ordering::SeqCst) > 0
    })
    .await;
    n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"heartbeat"))
        .await
        .unwrap();
    let (from, service, _) = next_message(&mut n2.inbound).await;
    assert_eq!((from, service), (NodeId(1), ServiceId(1)));
    let consumed_at_heartbeat = consumed.load(Ordering::SeqCst);
    assert!(
        consumed_at_heartbeat < TOTAL / 2,
        "the heartbeat waited for {consumed_at_heartbeat} stream bytes"
    );

    let sent = timeout(Duration::from_secs(60), sender)
        .await
        .expect("stream sent in time")
        .expect("sender task")
        .expect("stream sent");
    let (chunks, len, crc) = timeout(Duration::from_secs(60), consumer)
        .await
        .expect("stream received in time")
        .expect("consumer task")
        .expect("stream intact");
    assert_eq!((sent, len), (TOTAL, TOTAL));
    assert_eq!(
        crc,
        sent_crc.load(Ordering::SeqCst),
        "CRC-32C of what arrived"
    );
    assert_eq!(chunks, 64, "1 MiB chunks delivered one by one");
    let gap = max_gap.load(Ordering::SeqCst);
    assert!(
        gap <= TOTAL / 2,
        "{gap} bytes were in flight at once: the stream is not bounded"
    );
    let n2_handle = nodes[&2].handle.clone();
    eventually("stream counters", || {
        n1.stats().peers[&NodeId(2)].streams_sent == 1
            && n2_handle.stats().peers[&NodeId(1)].streams_received == 1
    })
    .await;
    for node in nodes.values() {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn a_failing_source_aborts_the_stream_and_a_down_peer_refuses_one() {
    let mut nodes = start_nodes(
        &[1, 2],
        |_| TlsMode::Insecure,
        |c| {
            c.stream_chunk = 64 << 10;
        },
    )
    .await;
    let n1 = nodes[&1].handle.clone();
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .unwrap()
        .unwrap();
    let mut source = PatternReader::new(1 << 20);
    source.fail_after = Some(200 << 10);
    let err = n1
        .send_stream(NodeId(2), ServiceId(9), source, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StreamError::Read(m) if m.contains("on fire")),
        "{err}"
    );
    let n2 = nodes.get_mut(&2).unwrap();
    let Inbound::Stream(mut incoming) = next_inbound(&mut n2.inbound).await else {
        panic!("expected a stream");
    };
    let failure = loop {
        match timeout(WAIT, incoming.next_chunk()).await.expect("in time") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an aborted stream must not end cleanly"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&failure, StreamError::Aborted(m) if m.contains("on fire")),
        "{failure}"
    );

    let n2_handle = nodes[&2].handle.clone();
    n2_handle.shutdown().await;
    eventually("n1 sees n2 go", || !n1.is_connected(NodeId(2))).await;
    let err = n1
        .send_stream(NodeId(2), ServiceId(9), &b"tiny"[..], None)
        .await
        .unwrap_err();
    assert_eq!(err, StreamError::PeerDown(NodeId(2)));
    let err = n1
        .send_stream(NodeId(5), ServiceId(9), &b"tiny"[..], None)
        .await
        .unwrap_err();
    assert_eq!(err, StreamError::UnknownPeer(NodeId(5)));
    n1.shutdown().await;
}

#[tokio::test]
async fn corrupt_or_aborted_incoming_streams_fail_with_the_reason() {
    let mut nodes = start_some(&[1, 2], &[2], |_| TlsMode::Insecure, |_| {}).await;
    let n2 = nodes.get_mut(&2).unwrap();
    let (mut fake, _) = fake_dial(n2.handle.local_addr(), hello(1, 2)).await;
    let bytes = Bytes::from_static(b"0123456789");
    let good_crc = crc32c::crc32c(&bytes);
    let frames = [
        Frame::StreamStart {
            stream: StreamId(1),
            service: ServiceId(9),
            total_len: Some(10),
        },
        Frame::StreamChunk {
            stream: StreamId(1),
            bytes: bytes.clone(),
        },
        Frame::StreamEnd {
            stream: StreamId(1),
            len: 10,
            crc32c: good_crc ^ 1,
        },
        Frame::StreamStart {
            stream: StreamId(2),
            service: ServiceId(9),
            total_len: None,
        },
        Frame::StreamChunk {
            stream: StreamId(2),
            bytes: bytes.clone(),
        },
        Frame::StreamAbort {
            stream: StreamId(2),
            reason: "source vanished".into(),
        },
        Frame::StreamStart {
            stream: StreamId(3),
            service: ServiceId(9),
            total_len: Some(10),
        },
        Frame::StreamChunk {
            stream: StreamId(3),
            bytes,
        },
        Frame::StreamEnd {
            stream: StreamId(3),
            len: 10,
            crc32c: good_crc,
        },
    ];
    for frame in frames {
        fake.feed(frame).await.unwrap();
    }
    fake.flush().await.unwrap();
    let mut results = Vec::new();
    for _ in 0..3 {
        let Inbound::Stream(incoming) = next_inbound(&mut n2.inbound).await else {
            panic!("expected a stream");
        };
        let mut out = Vec::new();
        results.push(
            timeout(WAIT, incoming.copy_to(&mut out))
                .await
                .expect("in time"),
        );
    }
    assert!(
        matches!(results[0], Err(StreamError::Checksum { .. })),
        "{:?}",
        results[0]
    );
    assert_eq!(
        results[1],
        Err(StreamError::Aborted("source vanished".into()))
    );
    assert_eq!(results[2], Ok(10));
    n2.handle.shutdown().await;
}

#[tokio::test]
async fn try_send_to_a_stalled_peer_eventually_reports_full() {
    // A fake n2 that completes the handshake and then never reads.
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let mut n1_config = config(
        1,
        BTreeMap::from([(NodeId(2), listener.local_addr().unwrap())]),
        TlsMode::Insecure,
    );
    n1_config.queue_capacity = 16;
    let (n1, _n1_inbound) = Transport::start(n1_config).await.unwrap();
    let (tcp, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut stalled = Framed::new(tcp, FrameCodec::new(HANDSHAKE_MAX_FRAME));
    let first = timeout(WAIT, stalled.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Frame::Hello(hello(1, 2)));
    stalled.send(Frame::Hello(hello(2, 1))).await.unwrap();
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .unwrap()
        .unwrap();

    let payload = Bytes::from(vec![7u8; 64 << 10]);
    let mut accepted = 0u32;
    let full = loop {
        match n1.try_send(NodeId(2), ServiceId(1), payload.clone()) {
            Ok(()) => {
                accepted += 1;
                assert!(
                    accepted < 8192,
                    "512 MiB accepted by a peer that reads nothing"
                );
                tokio::task::yield_now().await;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(full, SendError::Full(NodeId(2)));
    let stats = n1.stats().peers[&NodeId(2)].clone();
    assert_eq!((stats.queue_depth, stats.queue_capacity), (16, 16));
    assert!(stats.connected && stats.dropped >= 1, "{stats:?}");
    // `send` waits (backpressure) rather than failing while the peer is connected.
    let waited = timeout(
        Duration::from_millis(300),
        n1.send(NodeId(2), ServiceId(1), payload.clone()),
    )
    .await;
    assert!(
        waited.is_err(),
        "send returned {waited:?} instead of waiting"
    );
    drop(stalled);
    n1.shutdown().await;
}

#[tokio::test]
async fn messages_to_a_down_peer_are_dropped_once_the_queue_is_full() {
    let vacant = TcpListener::bind(loopback()).await.unwrap();
    let nobody = vacant.local_addr().unwrap();
    drop(vacant);
    let mut n1_config = config(1, BTreeMap::from([(NodeId(2), nobody)]), TlsMode::Insecure);
    n1_config.queue_capacity = 8;
    let (n1, _inbound) = Transport::start(n1_config).await.unwrap();
    for i in 0..8u8 {
        n1.try_send(NodeId(2), ServiceId(1), Bytes::from(vec![i]))
            .expect("room in the queue");
    }
    assert_eq!(
        n1.try_send(NodeId(2), ServiceId(1), Bytes::from_static(b"x")),
        Err(SendError::Full(NodeId(2)))
    );
    let dropped = timeout(
        WAIT,
        n1.send(NodeId(2), ServiceId(1), Bytes::from_static(b"y")),
    )
    .await
    .expect("send does not wait for a down peer");
    assert_eq!(dropped, Err(SendError::PeerDown(NodeId(2))));
    assert_eq!(
        n1.try_send(NodeId(3), ServiceId(1), Bytes::new()),
        Err(SendError::UnknownPeer(NodeId(3)))
    );
    let too_big = Bytes::from(vec![0u8; n1.max_payload() + 1]);
    assert!(matches!(
        n1.try_send(NodeId(2), ServiceId(1), too_big),
        Err(SendError::TooLarge { .. })
    ));
    eventually("dial failures are counted", || {
        n1.stats().peers[&NodeId(2)].connect_failures >= 1
    })
    .await;
    let stats = n1.stats().peers[&NodeId(2)].clone();
    assert_eq!((stats.queue_depth, stats.dropped), (8, 2), "{stats:?}");
    assert!(stats.last_error.unwrap().contains("connect to"));
    n1.shutdown().await;
    assert_eq!(
        n1.try_send(NodeId(2), ServiceId(1), Bytes::new()),
        Err(SendError::Closed)
    );
}

#[tokio::test]
async fn shutdown_releases_the_port_and_ends_the_inbound_channel() {
    let mut nodes = start_nodes(&[1, 2], |_| TlsMode::Insecure, |_| {}).await;
    let n1 = nodes[&1].handle.clone();
    timeout(WAIT, n1.wait_connected(NodeId(2)))
        .await
        .unwrap()
        .unwrap();
    let n2 = nodes.remove(&2).unwrap();
    let addr = n2.handle.local_addr();
    n2.handle.shutdown().await;
    let mut inbound = n2.inbound;
    assert!(timeout(WAIT, inbound.recv()).await.unwrap().is_none());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
    assert_eq!(
        n2.handle.send(NodeId(1), ServiceId(1), Bytes::new()).await,
        Err(SendError::Closed)
    );
    n1.shutdown().await;
}

/// The idle timeout counts bytes, not whole frames: a large frame that takes several idle
/// periods to arrive keeps its connection, while a silent peer still loses it.
#[tokio::test]
async fn a_frame_slower_than_the_idle_timeout_still_arrives() {
    let mut nodes = start_some(
        &[1, 2],
        &[2],
        |_| TlsMode::Insecure,
        |c| {
            c.keepalive_interval = Duration::from_millis(100);
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let n2 = nodes[&2].handle.clone();
    let (mut framed, answer) = fake_dial(n2.local_addr(), hello(1, 2)).await;
    assert_eq!(answer, Frame::Hello(hello(2, 1)));
    // One Data frame of 4 KiB, written in 16 slices over about 1.6 s: more than five idle
    // periods, with bytes arriving in each.
    let payload = vec![9u8; 4096];
    let mut wire = bytes::BytesMut::new();
    encode_frame(
        &Frame::Data {
            service: ServiceId(3),
            payload: Bytes::from(payload.clone()),
        },
        DEFAULT_MAX_FRAME,
        &mut wire,
    )
    .unwrap();
    for slice in wire.chunks(wire.len().div_ceil(16)) {
        framed.get_mut().write_all(slice).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = nodes.get_mut(&2).unwrap();
    let (from, service, got) = next_message(&mut node.inbound).await;
    assert_eq!((from, service, got.len()), (NodeId(1), ServiceId(3), 4096));
    // Now silence: the connection is dropped as idle.
    eventually("n2 drops the silent peer", || !n2.is_connected(NodeId(1))).await;
    n2.shutdown().await;
}
