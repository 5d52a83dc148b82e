//! The proxy's lean HTTP/1.1 path against scripted raw-TCP upstreams and clients: body
//! framings, large bodies, upstreams that close or misbehave, and malformed requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_mesh::config::ProxyConfig;
use synod_mesh::proxy;
use synod_mesh::upstream::StaticSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a scripted upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    /// The request's number on its connection, from 0.
    on_connection: usize,
}

/// What a scripted upstream does with a request.
enum Step {
    Write(Vec<u8>),
    Pause(u64),
    Close,
}

type Script = Arc<dyn Fn(&Seen) -> Vec<Step> + Send + Sync>;

/// An upstream that reads Content-Length-framed requests and answers as `script` says.
/// Returns its address and a count of the connections it accepted.
async fn scripted(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut on_connection = 0;
                'requests: loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < length {
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..length).collect();
                    let seen = Seen {
                        head,
                        body,
                        on_connection,
                    };
                    on_connection += 1;
                    for step in script(&seen) {
                        match step {
                            Step::Write(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                            Step::Close => break 'requests,
                        }
                    }
                }
            });
        }
    });
    (address, connections)
}

async fn start(upstreams: &[SocketAddr], extra: &str) -> proxy::RunningProxy {
    let instances: Vec<String> = upstreams
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ id = \"u{i}\", address = \"{a}\" }}"))
        .collect();
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\ninstances = [{}]\n{extra}",
        instances.join(", ")
    );
    let config = ProxyConfig::parse(&text).unwrap();
    let source = Arc::new(StaticSource::from_config(&config));
    proxy::start(config, source).await.unwrap()
}

/// A response as a raw client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Read one response from `stream` (Content-Length or chunked; `head_request` for HEAD).
/// `None` if the connection ends before the response does.
async fn read_answer(stream: &mut TcpStream, head_request: bool) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let mut answer = Answer {
        status,
        head,
        body: Vec::new(),
    };
    if head_request {
        return Some(answer);
    }
    if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().ok()?;
        while buf.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        answer.body = buf[..length].to_vec();
        return Some(answer);
    }
    // Chunked: decode simply (extensions skipped, trailers read and dropped).
    assert_eq!(
        answer.header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let line = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?, 16).ok()?;
        at = line_end + 2;
        while buf.len() < at + size + 2 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if size == 0 {
            // The trailer section ends with an empty line.
            while !(buf[at..].starts_with(b"\r\n")
                || buf[at..].windows(4).any(|w| w == b"\r\n\r\n"))
            {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(answer);
        }
        answer.body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// A client connection to the proxy's `web` listener.
async fn connect(proxy: &proxy::RunningProxy) -> TcpStream {
    TcpStream::connect(proxy.address("web").unwrap())
        .await
        .unwrap()
}

/// Send `request` on `client` and read the answer to it (not to a HEAD).
async fn ask(client: &mut TcpStream, request: &[u8]) -> Answer {
    client.write_all(request).await.unwrap();
    read_answer(client, false).await.unwrap()
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-from: upstream\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection_and_heads_have_no_body() {
    let (upstream, connections) = scripted(Arc::new(|seen: &Seen| {
        if seen.head.starts_with("HEAD") {
            return vec![Step::Write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n".to_vec(),
            )];
        }
        vec![Step::Write(ok(seen.head.as_bytes()))]
    }))
    .await;
    let proxy = start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    for i in 0..5 {
        let request =
            format!("GET /n/{i} HTTP/1.1\r\nhost: example\r\nconnection: keep-alive\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut client, false).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-synod-upstream").as_deref(), Some("u0"));
        assert_eq!(answer.header("x-synod-attempts").as_deref(), Some("1"));
        assert_eq!(answer.header("x-from").as_deref(), Some("upstream"));
        let seen = String::from_utf8_lossy(&answer.body).to_string();
        assert!(
            seen.starts_with(&format!("GET /n/{i} HTTP/1.1\r\n")),
            "{seen}"
        );
        assert!(
            seen.to_ascii_lowercase().contains("host: example"),
            "{seen}"
        );
        assert!(seen.contains("x-synod-timeout-ms: "), "{seen}");
        // Hop-by-hop fields stay at the hop.
        assert!(!seen.to_ascii_lowercase().contains("keep-alive"), "{seen}");
    }
    // A HEAD's answer has the upstream's content-length and no body, and the connection
    // stays usable.
    client
        .write_all(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut client, true).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("42"));
    let after = read_answer(&mut client, false).await.unwrap();
    assert!(String::from_utf8_lossy(&after.body).starts_with("GET /after "));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn chunked_bodies_both_ways() {
    // The upstream echoes the body it got (always Content-Length framed by the proxy) in
    // three chunks, written apart.
    let (upstream, _) = scripted(Arc::new(|seen: &Seen| {
        assert!(
            seen.head
                .to_ascii_lowercase()
                .contains("content-length: 11"),
            "{}",
            seen.head
        );
        assert!(!seen.head.to_ascii_lowercase().contains("transfer-encoding"));
        let body = seen.body.clone();
        vec![
            Step::Write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()),
            Step::Write(format!("{:x}\r\n", 5).into_bytes()),
            Step::Pause(20),
            Step::Write([&body[..5], b"\r\n"].concat()),
            Step::Pause(20),
            Step::Write(format!("{:x};ext=1\r\n", body.len() - 5).into_bytes()),
            Step::Write([&body[5..], b"\r\n"].concat()),
            Step::Write(b"0\r\nx-trailer: t\r\n\r\n".to_vec()),
        ]
    }))
    .await;
    let proxy = start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    for _ in 0..2 {
        let answer = ask(&mut client, b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"hello world");
    }
}

#[tokio::test]
async fn large_bodies_stream_through() {
    const SIZE: usize = 6 << 20;
    let big: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| (i % 251) as u8).collect());
    let reply = big.clone();
    let (upstream, _) = scripted(Arc::new(move |seen: &Seen| {
        if seen.head.starts_with("POST") {
            // A large request body arrives whole.
            vec![Step::Write(ok(format!("{}", seen.body.len()).as_bytes()))]
        } else {
            vec![Step::Write(ok(&reply))]
        }
    }))
    .await;
    let proxy = start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    let answer = ask(&mut client, b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body == *big, "the body arrived intact");
    let head = format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {SIZE}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&big).await.unwrap();
    let answer = read_answer(&mut client, false).await.unwrap();
    assert_eq!(answer.body, SIZE.to_string().as_bytes());
    // Over max_body_bytes: 413.
    let small = start(&[upstream], "max_body_bytes = 1000").await;
    let mut client = TcpStream::connect(small.address("web").unwrap())
        .await
        .unwrap();
    client
        .write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client, false).await.unwrap().status, 413);
}

#[tokio::test]
async fn an_upstream_closing_a_kept_alive_connection_is_retried_or_a_502() {
    // The first request on each connection is answered; the second is read and the
    // connection closed without an answer.
    let (upstream, connections) = scripted(Arc::new(|seen: &Seen| {
        if seen.on_connection == 0 {
            vec![Step::Write(ok(b"first"))]
        } else {
            vec![Step::Close]
        }
    }))
    .await;
    let proxy = start(&[upstream], "[service.retry]\nmax_retries = 0").await;
    let mut client = connect(&proxy).await;
    client
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_answer(&mut client, false).await.unwrap().body,
        b"first"
    );
    // A GET on the pooled connection, which the upstream closes: sent again on a new
    // connection, even with retries off, and answered.
    let answer = ask(&mut client, b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"first");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // A POST is not sent twice: 502.
    let answer = ask(
        &mut client,
        b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(String::from_utf8_lossy(&answer.body).contains("closed"));
    // The client connection still works.
    client
        .write_all(b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client, false).await.unwrap().status, 200);
}

#[tokio::test]
async fn an_upstream_dying_mid_body_closes_the_client_connection() {
    let (upstream, _) = scripted(Arc::new(|seen: &Seen| {
        if seen.head.starts_with("GET /cut") {
            vec![
                Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial".to_vec()),
                Step::Pause(20),
                Step::Close,
            ]
        } else {
            vec![Step::Write(ok(b"fine"))]
        }
    }))
    .await;
    let proxy = start(&[upstream], "").await;
    let address = proxy.address("web").unwrap();
    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_answer(&mut client, false).await.is_none(),
        "a truncated body is not a response"
    );
    // The proxy is fine.
    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client, false).await.unwrap().body, b"fine");
}

#[tokio::test]
async fn a_malformed_upstream_response_is_a_502_or_retried_elsewhere() {
    let (bad, _) = scripted(Arc::new(|_: &Seen| {
        vec![
            Step::Write(b"HTTP/1.1 2x0 Nope\r\n\r\n".to_vec()),
            Step::Close,
        ]
    }))
    .await;
    let (lying, _) = scripted(Arc::new(|_: &Seen| {
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
        )]
    }))
    .await;
    let (good, _) = scripted(Arc::new(|_: &Seen| vec![Step::Write(ok(b"good"))])).await;
    for upstream in [bad, lying] {
        let proxy = start(&[upstream], "[service.retry]\nmax_retries = 0").await;
        let mut client = connect(&proxy).await;
        for _ in 0..2 {
            let answer = ask(&mut client, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            assert_eq!(answer.status, 502, "{answer:?}");
            assert!(String::from_utf8_lossy(&answer.body).contains("malformed response"));
        }
    }
    // With a good instance beside it, a GET is retried there.
    let proxy = start(&[bad, good], "[service.outlier]\nenabled = false").await;
    let mut client = connect(&proxy).await;
    for _ in 0..4 {
        let answer = ask(&mut client, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"good");
    }
}

#[tokio::test]
async fn malformed_client_requests_get_400() {
    let (upstream, connections) =
        scripted(Arc::new(|_: &Seen| vec![Step::Write(ok(b"never"))])).await;
    let proxy = start(&[upstream], "").await;
    let address = proxy.address("web").unwrap();
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nx-synod-timeout-ms: soon\r\n\r\n",
    ];
    for case in cases {
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(case).await.unwrap();
        let answer = read_answer(&mut client, false).await.unwrap();
        assert_eq!(
            answer.status,
            400,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    // A head that never ends: 431.
    let mut client = TcpStream::connect(address).await.unwrap();
    let mut long = b"GET / HTTP/1.1\r\n".to_vec();
    long.extend_from_slice(&[b'a'; 70_000]);
    let _ = client.write_all(&long).await;
    assert_eq!(read_answer(&mut client, false).await.unwrap().status, 431);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn http10_falls_back_to_hyper() {
    let (upstream, _) = scripted(Arc::new(|_: &Seen| vec![Step::Write(ok(b"old"))])).await;
    let proxy = start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    let answer = ask(&mut client, b"GET / HTTP/1.0\r\nhost: x\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"old");
}

#[tokio::test]
async fn a_body_delimited_by_close_is_relayed_and_the_client_connection_closed() {
    let (upstream, _) = scripted(Arc::new(|_: &Seen| {
        vec![
            Step::Write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ".to_vec()),
            Step::Pause(20),
            Step::Write(b"the end".to_vec()),
            Step::Close,
        ]
    }))
    .await;
    let proxy = start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nuntil the end"), "{text}");
}
