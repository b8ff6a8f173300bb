//! The API listener against idle and slow sockets, on a process with few file descriptors:
//! idle connections are closed, slow headers and bodies time out, and a real client still
//! gets in.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{data_dir, eventually, Server, DEADLINE};

/// Short timeouts, so the test sees them act; the open-file limit is set by the test.
const TIMEOUTS: &[(&str, &str)] = &[
    ("WASMHOOKS_API__HEADER_TIMEOUT", "1s"),
    ("WASMHOOKS_API__BODY_TIMEOUT", "1s"),
    ("WASMHOOKS_API__IDLE_TIMEOUT", "1s"),
];

fn address(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the socket (or the deadline passes, which fails the test);
/// returns what it answered.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server kept the socket open");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn idle_sockets_cannot_lock_out_the_api() {
    let (_tmp, dir) = data_dir();
    let server = Server::start_with_open_files(&dir, TIMEOUTS, 256).await;
    let addr = address(&server);
    // More idle sockets than the process has descriptors.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // A real client still gets in while they are held open.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually("the API to answer beside 400 idle sockets", || async {
        let response = fresh.get(format!("{}/healthz", server.url)).send().await;
        response
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .map(|_| ())
    })
    .await;
    // The server closed the idle ones on its own.
    for stream in idle.iter_mut().take(50) {
        assert_eq!(until_closed(stream).await, "");
    }
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn slow_headers_and_bodies_time_out() {
    let (_tmp, dir) = data_dir();
    let server = Server::start_with_open_files(&dir, TIMEOUTS, 256).await;
    let addr = address(&server);

    // Headers dribbled one line at a time never finish: the connection is closed.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let dribble = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, dribble)
        .await
        .expect("the server closed a connection whose headers never finished");

    // A body that never comes, small or announced as 1 GB: 408 once api.body_timeout
    // passes, and the connection closes.
    for length in [1_000_000u64, 1_000_000_000] {
        let mut stalled = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n{{\"kind\"",
            crate::support::ADMIN_KEY
        );
        stalled.write_all(head.as_bytes()).await.unwrap();
        let answer = until_closed(&mut stalled).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("api.body_timeout"), "{answer}");
    }

    // The API is still there for everyone else.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}
