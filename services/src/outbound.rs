//! Outgoing HTTP: a finished task's `callback_url`, trace batches to an
//! OTLP collector. One [`HttpClient`] on reqwest (rustls), for `http://`
//! and `https://`, that never follows a redirect.
//!
//! A callback URL comes from whoever submitted the task, so a guarded
//! client ([`HttpClient::guarded`]) checks it before anything is sent:
//!
//! * the scheme is `http` or `https`, and the URL holds no control
//!   characters (no header can be smuggled in);
//! * every address the host resolves to is public: loopback, private,
//!   link-local (cloud metadata at 169.254.169.254 included), shared and
//!   unspecified addresses are refused, unless the host is listed in
//!   `[compute] callback_allowed_hosts`. The check runs in the resolver
//!   reqwest connects with, so the address checked is the address used.
//!
//! A POST is retried, with jittered backoff, only when trying again can
//! help: a connection error or a 5xx. A 4xx or a refused destination is final.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is somewhere a caller-chosen URL must not reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
                || (a == 192 && b == 0) // IETF protocol assignments
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// The resolver of a guarded client: refuses names that resolve to an
/// internal address, unless they are allowed.
#[derive(Debug)]
struct Guard {
    allowed: Vec<String>,
}

impl Guard {
    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allows_name(name.as_str());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed {
                if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
                    let why = format!(
                        "{host} resolves to the internal address {} (allow it in [compute] callback_allowed_hosts)",
                        bad.ip()
                    );
                    return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The guard refused a destination.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Whether `e` or one of its causes is the guard's refusal.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<Refused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A POST that failed, and whether trying again could help.
#[derive(Debug)]
struct Failure {
    reason: String,
    retry: bool,
}

/// Sends JSON POSTs; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    guard: Option<Arc<Guard>>,
}

fn builder(extra_ca: Option<&Path>) -> Result<reqwest::ClientBuilder, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent("nova-rs");
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        b = b.add_root_certificate(ca);
    }
    Ok(b)
}

impl HttpClient {
    /// A client for caller-chosen URLs: internal destinations are refused
    /// unless their host is in `allowed_hosts`; `extra_ca` is trusted
    /// beside the system's roots.
    pub fn guarded(allowed_hosts: &[String], extra_ca: Option<&Path>) -> Result<Self, String> {
        let guard = Arc::new(Guard { allowed: allowed_hosts.to_vec() });
        let client = builder(extra_ca)?.dns_resolver(guard.clone()).build().map_err(|e| e.to_string())?;
        Ok(Self { client, guard: Some(guard) })
    }

    /// A client for destinations the operator configured (an OTLP collector).
    pub fn open() -> Self {
        let client = builder(None).and_then(|b| b.build().map_err(|e| e.to_string())).unwrap_or_default();
        Self { client, guard: None }
    }

    /// Check `url` before anything is sent: its form, and (guarded) a literal address.
    fn check(&self, url: &str) -> Result<reqwest::Url, String> {
        if url.chars().any(char::is_control) {
            return Err("the URL holds control characters".into());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("only http:// and https:// URLs are allowed, not {}://", parsed.scheme()));
        }
        let host = parsed.host_str().ok_or("the URL has no host")?;
        if let Some(guard) = &self.guard {
            let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
            if let Ok(ip) = literal {
                if is_internal(ip) && !guard.allows_name(host) {
                    return Err(format!("{ip} is an internal address (allow it in [compute] callback_allowed_hosts)"));
                }
            }
        }
        Ok(parsed)
    }

    async fn post_once(&self, url: reqwest::Url, body: Vec<u8>) -> Result<(), Failure> {
        let sent = self.client.post(url).header("content-type", "application/json").body(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure {
                reason: format!("HTTP status {}", r.status().as_u16()),
                retry: r.status().is_server_error(),
            }),
            Err(e) => {
                // A refused destination is final; a connection that failed may work next time.
                let refused = refused(&e);
                let reason = if refused { format!("refused: {}", error_chain(&e)) } else { error_chain(&e) };
                Err(Failure { reason, retry: !refused && (e.is_connect() || e.is_timeout() || e.is_request()) })
            }
        }
    }

    /// POST `body` to `url`; on a connection error or a 5xx, try again up
    /// to `attempts` times in all, pausing from `first_pause`, doubling,
    /// ±50 %. `Err` says why the last try failed.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        attempts: u32,
        first_pause: Duration,
    ) -> Result<(), String> {
        let parsed = self.check(url).map_err(|e| format!("POST to {url} refused: {e}"))?;
        let mut pause = first_pause;
        for attempt in 1..=attempts.max(1) {
            match self.post_once(parsed.clone(), body.clone()).await {
                Ok(()) => return Ok(()),
                Err(f) if f.retry && attempt < attempts => {
                    tracing::warn!(url, attempt, error = %f.reason, "HTTP POST failed; retrying");
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                    pause *= 2;
                }
                Err(f) => return Err(format!("POST to {url} failed after {attempt} attempt(s): {}", f.reason)),
            }
        }
        Err(format!("POST to {url} was not tried"))
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_before_sending() {
        let c = HttpClient::guarded(&[], None).unwrap();
        assert!(c.check("http://127.0.0.1:8080/x").unwrap_err().contains("internal address"));
        assert!(c.check("http://[::1]/").unwrap_err().contains("internal address"));
        assert!(c.check("http://example.com/x\r\nX-Injected: 1").unwrap_err().contains("control characters"));
        assert!(c.check("file:///etc/passwd").unwrap_err().contains("only http"));
        assert!(c.check("https://example.com/cb").is_ok());
        let allowed = HttpClient::guarded(&["127.0.0.1".into()], None).unwrap();
        assert!(allowed.check("http://127.0.0.1:8080/x").is_ok());
    }
}
