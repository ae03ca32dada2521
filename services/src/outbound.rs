//! Outgoing HTTP: a finished task's `callback_url`, trace batches to an
//! OTLP collector. One [`HttpClient`] on reqwest (rustls), for `http://`
//! and `https://`, that never follows a redirect.
//!
//! A callback URL comes from whoever submitted the task, so a guarded
//! client ([`HttpClient::guarded`]) checks it before anything is sent:
//!
//! * the scheme is `http` or `https`, and the URL holds no control
//!   characters (no header can be smuggled in);
//! * every address the host resolves to is a global one: every block of
//!   IANA's IPv4 and IPv6 special-purpose address registries that is not
//!   globally reachable is refused ([`is_internal`]: loopback, private,
//!   link-local with cloud metadata at 169.254.169.254, shared, benchmarking,
//!   documentation, NAT64, 6to4, Teredo, site-local, IPv4-compatible…),
//!   unless the host is listed in `[compute] callback_allowed_hosts`. The
//!   check runs in the resolver reqwest connects with, so the address
//!   checked is the address used;
//! * no proxy is taken from the environment (`HTTP_PROXY` and the like
//!   would send the request where the guard never sees the address): only
//!   `[compute] callback_proxy`, which the operator then trusts to refuse
//!   internal destinations itself.
//!
//! A POST is retried, with jittered backoff, only when trying again can
//! help: a connection error or a 5xx. A 4xx or a refused destination is
//! final. What went wrong is said as "refused" or "failed", with the URL's
//! secrets masked, and never with the status a private endpoint answered.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// IPv4 blocks of IANA's special-purpose address registry that are not
/// globally reachable, as `(network, prefix length)`.
const SPECIAL_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (carrier NAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 31, 196, 0], 24), // AS112
    ([192, 52, 193, 0], 24), // AMT
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([192, 175, 48, 0], 24), // direct delegation AS112
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast
];

/// IPv6 blocks of IANA's special-purpose address registry that are not
/// globally reachable (or carry an IPv4 address that may not be).
const SPECIAL_V6: &[([u16; 8], u8)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 96),      // unspecified, loopback, IPv4-compatible (deprecated)
    ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), // IPv4-mapped (checked as IPv4 before this)
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), // NAT64
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // local-use NAT64
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),  // discard-only
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments (Teredo included)
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), // 6to4
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), // segment routing
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),  // unique local
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link-local
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // site-local (deprecated)
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),  // multicast
];

/// Whether the top `prefix` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let prefix = u32::from(prefix);
    prefix == 0 || (a ^ b) >> (width - prefix) == 0
}

/// Whether `ip` is somewhere a caller-chosen URL must not reach: any block
/// of IANA's special-purpose registries that is not globally reachable.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u128::from(u32::from(v4));
            SPECIAL_V4.iter().any(|(net, len)| same_prefix(bits, u128::from(u32::from_be_bytes(*net)), *len, 32))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let bits = u128::from(v6);
            SPECIAL_V6.iter().any(|(net, len)| same_prefix(bits, u128::from(std::net::Ipv6Addr::from(*net)), *len, 128))
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

/// Why an HTTP client could not be made, or a POST did not land.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The client: an extra CA that cannot be read, a bad proxy.
    #[error("{0}")]
    Client(String),
    /// The URL is refused before anything is sent.
    #[error("POST to {url} refused: {reason}")]
    Refused {
        /// The URL, its password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// Every try failed.
    #[error("POST to {url} after {attempts} attempt(s): {reason}")]
    Failed {
        /// The URL, its password masked.
        url: String,
        /// Tries made.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
    },
}

fn builder(extra_ca: Option<&Path>) -> Result<reqwest::ClientBuilder, OutboundError> {
    let mut b = reqwest::Client::builder()
        // Never a proxy from the environment: see the module docs.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent("nova-rs");
    if let Some(path) = extra_ca {
        let unusable = |e: &dyn std::fmt::Display| OutboundError::Client(format!("{}: {e}", path.display()));
        let pem = std::fs::read(path).map_err(|e| unusable(&e))?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| unusable(&e))?;
        b = b.add_root_certificate(ca);
    }
    Ok(b)
}

impl HttpClient {
    /// A client for caller-chosen URLs: internal destinations are refused
    /// unless their host is in `allowed_hosts`; `extra_ca` is trusted
    /// beside the system's roots.
    pub fn guarded(allowed_hosts: &[String], extra_ca: Option<&Path>) -> Result<Self, OutboundError> {
        Self::guarded_via(allowed_hosts, extra_ca, None)
    }

    /// The same, sending through `proxy` (`[compute] callback_proxy`) when
    /// given: the proxy resolves names, so it must refuse internal
    /// destinations itself; literal internal addresses are still refused here.
    pub fn guarded_via(
        allowed_hosts: &[String],
        extra_ca: Option<&Path>,
        proxy: Option<&str>,
    ) -> Result<Self, OutboundError> {
        let guard = Arc::new(Guard { allowed: allowed_hosts.to_vec() });
        let mut b = builder(extra_ca)?.dns_resolver(guard.clone());
        if let Some(proxy) = proxy {
            let proxy = reqwest::Proxy::all(proxy).map_err(|e| {
                OutboundError::Client(format!("callback_proxy {}: {e}", nova_rpc::mask::mask_password(proxy)))
            })?;
            b = b.proxy(proxy);
        }
        let client = b.build().map_err(|e| OutboundError::Client(e.to_string()))?;
        Ok(Self { client, guard: Some(guard) })
    }

    /// A client for destinations the operator configured (an OTLP collector).
    pub fn open() -> Self {
        let client =
            builder(None).and_then(|b| b.build().map_err(|e| OutboundError::Client(e.to_string()))).unwrap_or_default();
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
            Ok(r) => {
                // A private endpoint's answer is not for the caller to read.
                let private = r.remote_addr().is_none_or(|a| is_internal(a.ip()));
                let reason = if private {
                    "failed: the endpoint did not accept it".to_owned()
                } else {
                    format!("failed: HTTP status {}", r.status().as_u16())
                };
                Err(Failure { reason, retry: r.status().is_server_error() })
            }
            Err(e) => {
                // A refused destination is final; a connection that failed may work next time.
                let refused = refused(&e);
                let reason =
                    if refused { format!("refused: {}", refusal(&e)) } else { format!("failed: {}", error_chain(&e)) };
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
    ) -> Result<(), OutboundError> {
        let shown = nova_rpc::mask::mask_password(url);
        let parsed = self.check(url).map_err(|reason| OutboundError::Refused { url: shown.clone(), reason })?;
        let mut pause = first_pause;
        for attempt in 1..=attempts.max(1) {
            match self.post_once(parsed.clone(), body.clone()).await {
                Ok(()) => return Ok(()),
                Err(f) if f.retry && attempt < attempts => {
                    tracing::warn!(url = %shown, attempt, error = %f.reason, "HTTP POST failed; retrying");
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                    pause *= 2;
                }
                Err(f) => return Err(OutboundError::Failed { url: shown, attempts: attempt, reason: f.reason }),
            }
        }
        Err(OutboundError::Failed { url: shown, attempts: 0, reason: "not tried".into() })
    }
}

/// An error with its causes, as one line (a connection's failure: what
/// the caller may read, never an answer of the endpoint).
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

/// The guard's own words for a refusal, without what reqwest wraps them in.
fn refusal(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return r.0.clone();
        }
        cause = c.source();
    }
    e.to_string()
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
            "198.18.0.1",
            "198.19.255.255",
            "64:ff9b::7f00:1",
            "fec0::1",
            "2002:7f00:1::",
            "::7f00:1",
            "2001::1",
            "2001:db8::1",
            "255.255.255.255",
            "192.0.0.8",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "198.20.0.1", "2a00:1450::1", "8.8.8.8"] {
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
