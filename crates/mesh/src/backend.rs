//! A test backend: an HTTP/1.1 and h2c server that answers with its id after a set delay
//! and fails a set share of requests with 503. The demo, the tests and
//! `bench/proxy-compare.sh` (through `synod mesh backend`) use it as an upstream.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How a test backend behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    /// Returned in the body and the `x-backend` header.
    pub id: String,
    /// Added to every request but health checks.
    pub delay: Duration,
    /// Share of requests (0–1) answered with 503.
    pub failure_rate: f64,
}

/// Serve `spec` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, spec: BackendSpec) {
    let spec = Arc::new(spec);
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let spec = spec.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let spec = spec.clone();
                let n = counter.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(respond(&spec, n, &req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(spec: &BackendSpec, n: u64, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    if !spec.delay.is_zero() {
        tokio::time::sleep(spec.delay).await;
    }
    // A fixed pseudo-random sequence, so a run's failures are reproducible.
    let draw = crate::lb::mix64(n ^ crate::lb::hash_str(&spec.id, 1)) as f64 / u64::MAX as f64;
    let failed = draw < spec.failure_rate;
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", spec.id))));
    if failed {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    let headers = response.headers_mut();
    if let Ok(id) = spec.id.parse() {
        headers.insert("x-backend", id);
    }
    if let Some(timeout) = req.headers().get(crate::resilience::TIMEOUT_HEADER) {
        headers.insert("x-seen-timeout-ms", timeout.clone());
    }
    response
}
