//! Connection limits on a real gateway: past `connections.max` a new connection is closed at
//! once and counted; idle connections, and requests whose headers stall, are closed after
//! their timeouts; the gateway serves normally afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestGateway, models_dir};
use switchyard_gateway::config::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the peer closed the connection within `within` (a read ends, with 0 bytes or an
/// error); false if it stays open and silent.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut byte)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An error response before the close is fine; keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Everything the gateway writes on a connection until it closes it (within 10 s).
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer));
    match read.await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => panic!("{error} after {}", String::from_utf8_lossy(&answer)),
        Err(_) => panic!("still open after {}", String::from_utf8_lossy(&answer)),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `head` on a new connection and returns what comes back before the close.
async fn refusal(addr: &str, head: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head).await.unwrap();
    read_to_close(&mut socket).await
}

/// The JSON error body of a response, which must be there.
fn error_message(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.contains("content-type: application/json"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    body["error"].as_str().expect("an error message").to_owned()
}

#[tokio::test]
async fn refusals_made_before_a_request_is_read_carry_the_error_body() {
    let gateway = TestGateway::start_with(&models_dir(), |_| {}).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();

    let long_target = format!(
        "GET /v2/models/{}/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "m".repeat(100_000)
    );
    let answer = refusal(&addr, long_target.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    assert!(error_message(&answer).contains("65534 bytes"), "{answer}");

    let mut many_headers = String::from("GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for index in 0..300 {
        many_headers.push_str(&format!("x-filler-{index}: y\r\n"));
    }
    many_headers.push_str("\r\n");
    let answer = refusal(&addr, many_headers.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(error_message(&answer).contains("100 headers"), "{answer}");

    let answer = refusal(&addr, b"GET\x01 /v2 HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(error_message(&answer).contains("malformed"), "{answer}");

    // The gateway's own errors are untouched, and a refusal is a single response.
    let answer = refusal(
        &addr,
        b"GET /v2/models/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(error_message(&answer).contains("nope"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    gateway.stop().await;
}

#[tokio::test]
async fn connections_are_capped_and_idle_or_stalled_ones_closed() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.connections.max = 20;
        config.connections.header_read_timeout = HumanDuration(Duration::from_secs(1));
        config.connections.idle_timeout = HumanDuration(Duration::from_secs(2));
    })
    .await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();

    // 40 sockets at once that send nothing: 20 are held, the rest closed at once.
    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(TcpStream::connect(&addr).await.unwrap());
    }
    let checks = sockets.into_iter().map(|mut socket| {
        tokio::spawn(async move {
            let refused = closed_within(&mut socket, Duration::from_millis(300)).await;
            (refused, socket)
        })
    });
    let mut held = Vec::new();
    for check in checks.collect::<Vec<_>>() {
        let (refused, socket) = check.await.unwrap();
        if !refused {
            held.push(socket);
        }
    }
    // The test's own client may hold a keep-alive connection from waiting for readiness.
    assert!((19..=20).contains(&held.len()), "{} held", held.len());
    // A socket that never sends a request is closed, silently, when the idle timeout passes.
    let started = Instant::now();
    for socket in &mut held {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive connection that served a request and then idles is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let read = idle.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Headers that never finish are cut off after the header read timeout, with a 408 in the
    // protocol's form.
    let started = Instant::now();
    let answer = refusal(
        &addr,
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("header_read_timeout"), "{answer}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    // So does a request head that stalls on a keep-alive connection after a good request.
    let mut reused = TcpStream::connect(&addr).await.unwrap();
    reused
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let read = reused.read(&mut first).await.unwrap();
    assert!(first[..read].starts_with(b"HTTP/1.1 200 "));
    reused.write_all(b"GET /v2/he").await.unwrap();
    let answer = read_to_close(&mut reused).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    // Serving goes on, and the refusals were counted.
    let (status, body) = gateway.get("/v2/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let counted = gateway
        .metric(r#"switchyard_connections_refused_total{listener="HTTP"}"#)
        .await
        .expect("a refusal counter");
    assert!(counted >= 20.0, "{counted}");
    gateway.stop().await;
}
