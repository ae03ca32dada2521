//! Outgoing HTTP POSTs of JSON, retried with backoff a bounded number of
//! times: a finished task to its `callback_url`, trace batches to an OTLP
//! collector. Plain `http://` only, one request per connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POST `body` to `url` (plain `http://` only); `Err` with the last reason
/// after `attempts` tries with doubling pauses from `first_pause`.
pub(crate) async fn post_with_retry(
    url: &str,
    body: &[u8],
    attempts: u32,
    first_pause: Duration,
) -> Result<(), String> {
    let mut pause = first_pause;
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        match tokio::time::timeout(Duration::from_secs(10), post(url, body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out after 10s".into(),
        }
        tracing::warn!(url, attempt, error = %last, "HTTP POST failed");
        if attempt < attempts {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(format!("POST to {url} failed after {attempts} attempt(s): {last}"))
}

/// Split `http://host[:port]/path`.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("the URL must be http://…, got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, path.to_owned()))
}

async fn post(url: &str, body: &[u8]) -> Result<(), String> {
    let (addr, path) = split_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: nova-rs\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let status_line = String::from_utf8_lossy(&buf[..got]);
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("HTTP status {c}")),
        None => Err("no HTTP status in the answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(split_url("http://h:81/x/y").unwrap(), ("h:81".into(), "/x/y".into()));
        assert_eq!(split_url("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(split_url("https://h/").is_err());
    }
}
