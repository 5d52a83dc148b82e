//! The proxy over real loopback sockets, with in-process backends.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use synod_mesh::backend::{self, BackendSpec};
use synod_mesh::config::ProxyConfig;
use synod_mesh::proxy::{self, Availability};
use synod_mesh::upstream::StaticSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn spawn_backend(id: &str, delay_ms: u64, failure_rate: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(backend::serve(
        listener,
        BackendSpec {
            id: id.into(),
            delay: Duration::from_millis(delay_ms),
            failure_rate,
        },
    ));
    address
}

fn config(lb: &str, backends: &[(&str, SocketAddr)], extra: &str) -> ProxyConfig {
    let instances: Vec<String> = backends
        .iter()
        .map(|(id, a)| format!("{{ id = \"{id}\", address = \"{a}\" }}"))
        .collect();
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nlb = \"{lb}\"\ninstances = [{}]\n{extra}",
        instances.join(", ")
    );
    ProxyConfig::parse(&text).unwrap()
}

async fn start(config: ProxyConfig) -> proxy::RunningProxy {
    let source = Arc::new(StaticSource::from_config(&config));
    proxy::start(config, source).await.unwrap()
}

fn client(http2: bool) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(HttpConnector::new())
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    address: SocketAddr,
    headers: &[(&str, &str)],
) -> (StatusCode, String, hyper::HeaderMap) {
    let mut request = Request::get(format!("http://{address}/hello"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).trim().to_string(),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_http1_and_h2c_reaches_every_backend_in_turn() {
    let a = spawn_backend("a", 0, 0.0).await;
    let b = spawn_backend("b", 0, 0.0).await;
    let c = spawn_backend("c", 0, 0.0).await;
    let proxy = start(config("round-robin", &[("a", a), ("b", b), ("c", c)], "")).await;
    let address = proxy.address("web").unwrap();
    for http2 in [false, true] {
        let client = client(http2);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, body, _) = get(&client, address, &[]).await;
            assert_eq!(status, StatusCode::OK);
            seen.push(body);
        }
        let mut counts = BTreeMap::new();
        for id in &seen {
            *counts.entry(id.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{seen:?}");
        assert!(counts.values().all(|&c| c == 2), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_shrink_across_the_hop_and_bad_headers_are_rejected() {
    let a = spawn_backend("a", 0, 0.0).await;
    let proxy = start(config("round-robin", &[("a", a)], "timeout_ms = 2000")).await;
    let address = proxy.address("web").unwrap();
    let client = client(false);
    let (_, _, headers) = get(&client, address, &[]).await;
    let seen: u64 = headers["x-seen-timeout-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        seen <= 2000 && seen > 1000,
        "route timeout caps the budget: {seen}"
    );
    let (_, _, headers) = get(&client, address, &[("grpc-timeout", "300m")]).await;
    let seen: u64 = headers["x-seen-timeout-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen <= 300, "the caller's smaller budget wins: {seen}");
    let (status, body, _) = get(&client, address, &[("x-synod-timeout-ms", "soon")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("x-synod-timeout-ms"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_failing_backend_and_outlier_detection_ejects_it() {
    let good = spawn_backend("good", 0, 0.0).await;
    let bad = spawn_backend("bad", 0, 1.0).await;
    let extra = "[service.retry]\nmax_retries = 2\n[service.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 60000\n[service.breaker]\nenabled = false\n";
    let proxy = start(config(
        "round-robin",
        &[("good", good), ("bad", bad)],
        extra,
    ))
    .await;
    let address = proxy.address("web").unwrap();
    let client = client(false);
    for _ in 0..20 {
        let (status, body, _) = get(&client, address, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "good");
    }
    let availability = proxy.services[0].availability();
    assert!(
        availability.contains(&("bad".to_string(), Availability::Ejected)),
        "{availability:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_on_a_failing_backend_without_retries() {
    let bad = spawn_backend("bad", 0, 1.0).await;
    let extra = "[service.retry]\nmax_retries = 0\n[service.outlier]\nenabled = false\n[service.breaker]\nconsecutive_failures = 3\nopen_ms = 60000\n";
    let proxy = start(config("round-robin", &[("bad", bad)], extra)).await;
    let address = proxy.address("web").unwrap();
    let client = client(false);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&client, address, &[]).await.0.as_u16());
    }
    // Three failures reach the backend; then the open breaker leaves no upstream.
    assert_eq!(statuses, [503, 503, 503, 503, 503]);
    let availability = proxy.services[0].availability();
    assert_eq!(
        availability,
        [("bad".to_string(), Availability::BreakerOpen)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_proxy_carries_bytes_both_ways() {
    // An echo server as the upstream.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let config = config("least-connections", &[("echo", echo)], "protocol = \"tcp\"");
    let proxy = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.address("web").unwrap())
        .await
        .unwrap();
    stream.write_all(b"ping through the mesh").await.unwrap();
    let mut buf = [0u8; 21];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_to_another_instance_cuts_the_slow_ones_latency() {
    let slow = spawn_backend("slow", 400, 0.0).await;
    let fast = spawn_backend("fast", 0, 0.0).await;
    let extra = "[service.hedge]\ndelay_ms = 20\n";
    let proxy = start(config(
        "round-robin",
        &[("slow", slow), ("fast", fast)],
        extra,
    ))
    .await;
    let address = proxy.address("web").unwrap();
    let client = client(false);
    for _ in 0..6 {
        let started = tokio::time::Instant::now();
        let (status, body, _) = get(&client, address, &[]).await;
        assert_eq!(status, StatusCode::OK);
        // Every request either went to the fast instance or was hedged to it after 20 ms.
        assert_eq!(body, "fast");
        assert!(started.elapsed() < Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_added_by_the_upstream_source_join_rotation() {
    let a = spawn_backend("a", 0, 0.0).await;
    let b = spawn_backend("b", 0, 0.0).await;
    let config = config("round-robin", &[("a", a)], "");
    let source = Arc::new(StaticSource::from_config(&config));
    let proxy = proxy::start(config, source.clone()).await.unwrap();
    let address = proxy.address("web").unwrap();
    let client = client(false);
    assert_eq!(get(&client, address, &[]).await.1, "a");
    let instance = |id: &str, address| synod_mesh::upstream::Instance::new(id, address);
    assert!(source.update("web", vec![instance("a", a), instance("b", b)]));
    // The watch task applies the change asynchronously.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        seen.insert(get(&client, address, &[]).await.1);
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_can_be_spoken_to_over_h2c() {
    let a = spawn_backend("a", 0, 0.0).await;
    let proxy = start(config("round-robin", &[("a", a)], "upstream_http2 = true")).await;
    let address = proxy.address("web").unwrap();
    for http2 in [false, true] {
        let (status, body, headers) = get(&client(http2), address, &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
        assert_eq!(headers["x-synod-attempts"], "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_share_one_port_and_stop_with_the_proxy() {
    let a = spawn_backend("a", 0, 0.0).await;
    let b = spawn_backend("b", 0, 0.0).await;
    let mut config = config("round-robin", &[("a", a), ("b", b)], "");
    config.workers = Some(2);
    let proxy = start(config).await;
    let address = proxy.address("web").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        // A fresh client per request spreads connections over both workers' sockets.
        let (status, body, _) = get(&client(false), address, &[]).await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "workers stop listening when the proxy is dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_filter_the_instances_and_metadata_sets_their_weights() {
    let a = spawn_backend("a", 0, 0.0).await;
    let b = spawn_backend("b", 0, 0.0).await;
    let c = spawn_backend("c", 0, 0.0).await;
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nlb = \"weighted\"\n\
         tags = [\"v2\"]\nweight_key = \"weight\"\ninstances = [\n\
         {{ id = \"a\", address = \"{a}\", tags = [\"v2\", \"eu\"], meta = {{ weight = \"3\" }} }},\n\
         {{ id = \"b\", address = \"{b}\", tags = [\"v2\"], meta = {{ weight = \"lots\" }} }},\n\
         {{ id = \"c\", address = \"{c}\", weight = 5, tags = [\"v1\"] }},\n]\n"
    );
    let proxy = start(ProxyConfig::parse(&text).unwrap()).await;
    let address = proxy.address("web").unwrap();
    let client = client(false);
    let mut counts = BTreeMap::new();
    for _ in 0..16 {
        let (status, body, _) = get(&client, address, &[]).await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body).or_insert(0) += 1;
    }
    // c lacks the tag; a weighs 3 from its metadata; b's value is not a number, so it
    // keeps its weight of 1. Smooth weighted round robin gives exact shares per cycle.
    assert_eq!(
        counts,
        BTreeMap::from([("a".to_string(), 12), ("b".to_string(), 4)])
    );
    let ids: Vec<String> = proxy.services[0]
        .availability()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}
