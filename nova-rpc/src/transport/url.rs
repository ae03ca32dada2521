//! Transport URLs: `rabbit://user:pass@host:port[,user:pass@host2:port]/vhost?opts`.
//!
//! Several hosts in one URL are tried in order (kombu's failover). A host
//! without credentials takes the previous host's. Passwords are
//! percent-decoded here and masked whenever the URL is printed.

use std::fmt;

use percent_encoding::percent_decode_str;

use crate::{Result, RpcError};

/// One broker address in a transport URL.
#[derive(Clone, PartialEq, Eq)]
pub struct HostAddress {
    /// User name (default `guest`).
    pub username: String,
    /// Password (default `guest`); never printed.
    pub password: String,
    /// Host name or address.
    pub host: String,
    /// Port (5672, or 5671 for `amqps`).
    pub port: u16,
}

impl fmt::Debug for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***@{}:{}", self.username, self.host, self.port)
    }
}

/// A parsed transport URL.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// `rabbit`, `amqp`, `amqps` or `memory`.
    pub scheme: String,
    /// Brokers, in failover order (empty for `memory`, whose name is `vhost`).
    pub hosts: Vec<HostAddress>,
    /// The virtual host (for `memory://NAME`, the bus name).
    pub vhost: String,
    /// Query parameters, e.g. `ssl=1`, `heartbeat=30`.
    pub query: Vec<(String, String)>,
    original: String,
}

const SCHEMES: &[&str] = &["rabbit", "amqp", "amqps", "memory"];

impl TransportUrl {
    /// `url` with the password of every host replaced by `***`.
    ///
    /// A password may hold any character (`/`, `?`, `@` and `,` included,
    /// even unencoded), so the credentials run up to the *last* `@`, and of
    /// them only user names and the hosts of a failover list are shown.
    ///
    /// ```
    /// use nova_rpc::transport::TransportUrl;
    /// assert_eq!(TransportUrl::mask("rabbit://u:secret@h:5672/"), "rabbit://u:***@h:5672/");
    /// assert_eq!(TransportUrl::mask("rabbit://u:a/b?c@h/v"), "rabbit://u:***@h/v");
    /// assert_eq!(TransportUrl::mask("rabbit://u:p1@h1:5672,u:p2@h2:5672/"), "rabbit://u:***@h1:5672,u:***@h2:5672/");
    /// ```
    pub fn mask(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let Some(at) = rest.rfind('@') else {
            return url.to_owned();
        };
        let (mut credentials, tail) = (&rest[..at], &rest[at + 1..]);
        let Some((user, _)) = credentials.split_once(':') else {
            // User names only: nothing to hide.
            return url.to_owned();
        };
        // In a failover list every entry starts `<user>:`; an entry ends at
        // an `@host,` followed by the next one. Everything else is secret.
        let next_entry = format!(",{user}:");
        let mut hosts = Vec::new();
        while let Some((host, next)) = credentials.match_indices('@').find_map(|(i, _)| {
            let after = &credentials[i + 1..];
            let end = after.find(&next_entry)?;
            let host = &after[..end];
            let host_like = !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
            host_like.then(|| (host, &after[end + 1..]))
        }) {
            hosts.push(host);
            credentials = next;
        }
        let mut masked = format!("{scheme}://");
        for host in hosts {
            masked.push_str(&format!("{user}:***@{host},"));
        }
        masked.push_str(&format!("{user}:***@{tail}"));
        masked
    }

    /// Parse a transport URL; an unknown scheme or a malformed URL is an error naming it.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| RpcError::InvalidUrl { url: Self::mask(url), reason };
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad("expected SCHEME://[user:pass@]host[:port][/vhost]".into()))?;
        let scheme = scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(bad(format!("unknown scheme {scheme:?}; expected one of {}", SCHEMES.join(", "))));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (netloc, path) = match rest.split_once('/') {
            Some((n, p)) => (n, Some(p)),
            None => (rest, None),
        };
        let decode = |s: &str| -> Result<String> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(format!("{s:?} is not valid percent-encoded UTF-8")))
        };
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                Ok((decode(k)?, decode(v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        if scheme == "memory" {
            return Ok(Self {
                scheme,
                hosts: Vec::new(),
                vhost: decode(netloc)? + &decode(path.unwrap_or(""))?,
                query,
                original: url.to_owned(),
            });
        }
        let default_port = if scheme == "amqps" { 5671 } else { 5672 };
        let mut hosts: Vec<HostAddress> = Vec::new();
        for part in netloc.split(',') {
            if part.is_empty() {
                return Err(bad("empty host".into()));
            }
            let (cred, hostport) = match part.rsplit_once('@') {
                Some((c, h)) => (Some(c), h),
                None => (None, part),
            };
            let (username, password) = match (cred, hosts.last()) {
                (Some(c), _) => {
                    let (u, p) = c.split_once(':').unwrap_or((c, ""));
                    (decode(u)?, decode(p)?)
                }
                (None, Some(prev)) => (prev.username.clone(), prev.password.clone()),
                (None, None) => ("guest".into(), "guest".into()),
            };
            let (host, port) = split_host_port(hostport).ok_or_else(|| bad(format!("bad host:port {hostport:?}")))?;
            if host.is_empty() {
                return Err(bad("empty host name".into()));
            }
            hosts.push(HostAddress { username, password, host, port: port.unwrap_or(default_port) });
        }
        let vhost = match path.map(decode).transpose()? {
            None => "/".to_owned(),
            Some(v) if v.is_empty() => "/".to_owned(),
            Some(v) => v,
        };
        Ok(Self { scheme, hosts, vhost, query, original: url.to_owned() })
    }

    /// A query parameter's value.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether TLS is asked for: `amqps://`, or `?ssl=1|true`.
    pub fn tls(&self) -> bool {
        self.scheme == "amqps"
            || matches!(self.param("ssl").map(str::to_ascii_lowercase).as_deref(), Some("1" | "true" | "yes" | "on"))
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

impl fmt::Display for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::mask(&self.original))
    }
}

impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failover_hosts_and_inherits_credentials() {
        let u = TransportUrl::parse("rabbit://a:p%40ss@h1:5673,h2/vh?ssl=1").unwrap();
        assert_eq!(u.hosts.len(), 2);
        assert_eq!(u.hosts[0].password, "p@ss");
        assert_eq!(u.hosts[1].username, "a");
        assert_eq!(u.hosts[1].port, 5672);
        assert_eq!(u.vhost, "vh");
        assert!(u.tls());
        assert!(!u.to_string().contains("p%40ss"));
    }

    #[test]
    fn empty_vhost_is_root_and_errors_name_the_problem() {
        assert_eq!(TransportUrl::parse("amqp://h:1/").unwrap().vhost, "/");
        let e = TransportUrl::parse("zmq://h").unwrap_err().to_string();
        assert!(e.contains("zmq"), "{e}");
        let e = TransportUrl::parse("rabbit://u:pw@h:notaport/").unwrap_err().to_string();
        assert!(e.contains("notaport") && !e.contains("pw"), "{e}");
    }
}
