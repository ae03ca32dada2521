//! Where a message goes: the oslo `Target`.
//!
//! A [`Target`] names an exchange and topic, optionally one server on that
//! topic (`topic.host`), or every server (`fanout`), and the namespace and
//! version of the API being called. Clients send to targets; servers listen
//! on them.

use std::{borrow::Cow, fmt};

/// The default `control_exchange`, as in Nova.
pub const DEFAULT_EXCHANGE: &str = "nova";

/// An RPC address and API version, as oslo.messaging's `Target`.
///
/// ```
/// use nova_rpc::Target;
/// let t = Target::new("compute").with_server("host1").with_version("5.0");
/// assert_eq!(t.routing_key(), "compute.host1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Target {
    /// The topic exchange; `None` means the transport's `control_exchange`.
    pub exchange: Option<String>,
    /// The topic, e.g. `compute`.
    pub topic: String,
    /// One server on the topic (routing key `topic.server`).
    pub server: Option<String>,
    /// Every server on the topic (`topic_fanout` exchange).
    pub fanout: bool,
    /// The API namespace; `None` is the default namespace.
    pub namespace: Option<String>,
    /// The API version, `major.minor`; `None` is `1.0` on the wire's receiving side.
    pub version: Option<String>,
}

impl Target {
    /// A target for `topic` on the default exchange.
    pub fn new(topic: impl Into<String>) -> Self {
        Self { topic: topic.into(), ..Self::default() }
    }

    /// Address one server: routing key `topic.server`.
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Address every server of the topic.
    pub fn with_fanout(mut self, fanout: bool) -> Self {
        self.fanout = fanout;
        self
    }

    /// Use another exchange than `control_exchange`.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Set the API namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Set the API version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The routing key on the topic exchange: `topic` or `topic.server`.
    pub fn routing_key(&self) -> Cow<'_, str> {
        match &self.server {
            Some(server) => Cow::Owned(format!("{}.{}", self.topic, server)),
            None => Cow::Borrowed(&self.topic),
        }
    }

    /// The fanout exchange name, `topic_fanout`.
    pub fn fanout_exchange(&self) -> String {
        format!("{}_fanout", self.topic)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Target topic={}", self.topic)?;
        if let Some(e) = &self.exchange {
            write!(f, ", exchange={e}")?;
        }
        if let Some(s) = &self.server {
            write!(f, ", server={s}")?;
        }
        if self.fanout {
            write!(f, ", fanout=True")?;
        }
        if let Some(n) = &self.namespace {
            write!(f, ", namespace={n}")?;
        }
        if let Some(v) = &self.version {
            write!(f, ", version={v}")?;
        }
        write!(f, ">")
    }
}

/// An RPC API version, `major.minor[.revision]`, with oslo's compatibility rule.
///
/// ```
/// use nova_rpc::Version;
/// let endpoint: Version = "1.3".parse().unwrap();
/// assert!(endpoint.can_serve(&"1.1".parse().unwrap()));
/// assert!(!endpoint.can_serve(&"2.0".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version: must match exactly.
    pub major: u32,
    /// Minor version: the endpoint's must be at least the request's.
    pub minor: u32,
    /// Revision, compared when the minors are equal.
    pub revision: u32,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor, revision: 0 }
    }

    /// Whether an endpoint at `self` can serve a request for `requested`
    /// (oslo's `version_is_compatible`).
    pub fn can_serve(&self, requested: &Version) -> bool {
        self.major == requested.major && (self.minor, self.revision) >= (requested.minor, requested.revision)
    }
}

impl std::str::FromStr for Version {
    type Err = crate::RpcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || crate::RpcError::InvalidArgument {
            argument: "version".into(),
            reason: format!("{s:?} is not a version of the form major.minor"),
        };
        let mut parts = s.trim().split('.');
        let mut next = |required: bool| -> Result<u32, Self::Err> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| bad()),
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        let major = next(true)?;
        let minor = next(false)?;
        let revision = next(false)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { major, minor, revision })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.revision)
        }
    }
}
