//! `--metrics-listen` holds the gateway's kind of limits: one client's idle
//! sockets take at most its share, and everyone else is still answered.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connection to `to` from the loopback address `source`.
async fn connect(source: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_of_one_client_starve_nobody() {
    let at = nova_core::metrics_listen::serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..nova_core::metrics_listen::MAX_PER_CLIENT {
        idle.push(connect("127.0.0.1", at).await);
    }
    // Past its share, the same client's next connection is closed at once.
    let mut extra = connect("127.0.0.1", at).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the extra connection was closed: {closed:?}");
    // Someone else is answered.
    let mut other = connect("127.0.0.2", at).await;
    other.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), other.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The idle ones are closed once they have sent nothing for the read timeout.
    for mut s in idle {
        let ended = tokio::time::timeout(nova_core::metrics_listen::IO_TIMEOUT * 4, s.read(&mut buf)).await;
        assert!(ended.is_ok(), "an idle socket stayed open");
    }
}
