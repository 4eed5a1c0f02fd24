//! Connection limits on a real gateway: past `connections.max` a new connection is closed at
//! once and counted; idle connections, and requests whose headers stall, are closed after
//! their timeouts; the gateway serves normally afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::{TestGateway, connect_from, models_dir};
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

/// A configuration file for the spawned binary: the embedded defaults with these
/// `[connections]` keys.
fn connections_config(keys: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("[connections]\n{keys}\n")).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_that_only_answer_pings_are_closed_when_idle() {
    let config = connections_config(
        "idle_timeout = \"2s\"\nkeepalive_interval = \"250ms\"\nkeepalive_timeout = \"5s\"",
    );
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let config_path = config.path().display().to_string();
    let gateway = common::spawn_switchyard(&models_dir(), &url, &["--config", &config_path]).await;
    let addresses = [
        gateway.http.trim_start_matches("http://").to_owned(),
        gateway.grpc.clone(),
    ];
    // 200 clients, half on each port: each completes HTTP/2's handshake, answers the
    // server's pings (h2 does so by itself), and never sends a request.
    let started = Instant::now();
    let mut clients = Vec::new();
    for index in 0..200 {
        let address = addresses[index % 2].clone();
        clients.push(tokio::spawn(async move {
            let socket = TcpStream::connect(&address).await.unwrap();
            let (_send, connection) = h2::client::handshake(socket).await.unwrap();
            // Ends when the server closes the connection.
            let _ = connection.await;
            Instant::now()
        }));
    }
    for client in clients {
        let closed_at = tokio::time::timeout(Duration::from_secs(20), client)
            .await
            .expect("a ping-only HTTP/2 connection stayed open")
            .unwrap();
        let held = closed_at.duration_since(started);
        assert!(held < Duration::from_secs(2 + 5), "held for {held:?}");
        assert!(
            held >= Duration::from_millis(1900),
            "closed early, after {held:?}"
        );
    }
    // The gateway serves normally afterwards.
    let live = reqwest::get(format!("{}/v2/health/live", gateway.http))
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_longer_than_the_idle_timeout_are_answered() {
    // A lone request waits max_queue_delay (2 s) for company before it runs: twice the idle
    // timeout, on every connection it arrives on.
    let repo = common::mlp_repository("max_batch_size = 64\nmax_queue_delay = \"2s\"\n");
    let config = connections_config("idle_timeout = \"1s\"");
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let config_path = config.path().display().to_string();
    let gateway = common::spawn_switchyard(repo.path(), &url, &["--config", &config_path]).await;
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                              "data": vec![0.5f32; 64]}]});
    // HTTP/1 (one connection each) and HTTP/2 (one connection, many streams), concurrently.
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("{}/v2/models/mlp/infer", gateway.http);
    let started = Instant::now();
    let mut requests = Vec::new();
    for client in [&http1, &http2] {
        for _ in 0..4 {
            let request = client.post(&url).json(&body).send();
            requests.push(tokio::spawn(async move {
                request.await.map(|response| response.status().as_u16())
            }));
        }
    }
    for request in requests {
        assert_eq!(request.await.unwrap().expect("answered, not cut"), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the requests did not outlast the idle timeout ({:?})",
        started.elapsed()
    );
    // A body that arrives slowly, over longer than the idle timeout, is read whole.
    let address = gateway.http.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    let text = body.to_string();
    let head = format!(
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = text.as_bytes().split_at(text.len() / 2);
    socket.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    socket.write_all(rest).await.unwrap();
    let answer = read_to_close(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_holds_at_most_its_share_and_old_connections_are_retired() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.connections.max_per_client = 5;
        config.connections.max_age = HumanDuration(Duration::from_secs(2));
        config.connections.idle_timeout = HumanDuration(Duration::from_secs(30));
    })
    .await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    // The test's own client may hold a keep-alive connection from 127.0.0.1: the crowd comes
    // from 127.0.0.2.
    let mut crowd = Vec::new();
    for _ in 0..8 {
        crowd.push(connect_from(2, &addr).await);
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for mut socket in crowd {
        if closed_within(&mut socket, Duration::from_millis(300)).await {
            refused += 1;
        } else {
            held.push(socket);
        }
    }
    assert_eq!((held.len(), refused), (5, 3), "five held, the rest refused");
    // Another address is not held back by the first one's share.
    let mut other = connect_from(3, &addr).await;
    other
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let read = other.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..read]
    );
    // Past `max_age` every connection is retired (the idle timeout is far off), and a
    // closed one frees its share at once.
    let started = Instant::now();
    for socket in &mut held {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    assert!(closed_within(&mut other, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "retired after {:?}",
        started.elapsed()
    );
    drop(held);
    let mut again = connect_from(2, &addr).await;
    again
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let read = again.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..read]
    );
    gateway.stop().await;
}
