//! `--metrics-listen ADDRESS`: a service's metrics at `GET /metrics`, in
//! Prometheus text format (see [`nova_rpc::metrics`]). A deliberately tiny
//! HTTP/1.1 responder — one request per connection, nothing else served —
//! so a service binary needs no web framework for it. It holds the
//! gateway's limits: at most [`MAX_CONNECTIONS`] connections (more wait to
//! be accepted), [`MAX_PER_CLIENT`] per client address (more are closed),
//! and [`IO_TIMEOUT`] to read the request and again to write the answer.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one client address holds at once.
pub const MAX_PER_CLIENT: usize = 8;
/// To read a request, and again to write its answer.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bind `addr` and serve `/metrics` in the background.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "serving Prometheus metrics at /metrics");
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let clients = crate::connections::PerClient::new(MAX_PER_CLIENT);
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Past its share, a client's connection is closed at once.
                    let Some(client) = clients.admit(peer.ip()) else { continue };
                    tokio::spawn(async move {
                        answer(stream).await;
                        drop((client, permit));
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(bound)
}

async fn answer(mut stream: TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    if tokio::time::timeout(IO_TIMEOUT, read).await.is_err() {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let (status, body) = match head.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/metrics"] => ("200 OK", nova_rpc::metrics::render()),
        _ => ("404 Not Found", "only GET /metrics is served here\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    // A client that reads nothing does not hold the connection.
    let _ = tokio::time::timeout(IO_TIMEOUT, write).await;
}
