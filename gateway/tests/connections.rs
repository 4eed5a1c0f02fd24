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
    // A socket that never sends a request is closed when its headers are overdue.
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

    // Headers that never finish are cut off after the header read timeout.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(4));

    // Serving goes on, and the refusals were counted.
    let (status, body) = gateway.get("/v2/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let metrics = reqwest::get(&gateway.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|line| line.starts_with("switchyard_connections_refused_total{listener=\"HTTP\"}"))
        .unwrap_or_else(|| panic!("no refusal counter in\n{metrics}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= 20.0, "{line}");
    gateway.stop().await;
}
