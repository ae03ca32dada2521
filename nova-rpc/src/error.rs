//! Errors a caller can match on.
//!
//! Every fallible operation in `nova-rpc` returns [`RpcError`]. The variants
//! mirror the exceptions an oslo.messaging user knows (`MessagingTimeout`,
//! `RemoteError`, `NoSuchMethod`, `UnsupportedVersion`, `InvalidTarget`, …),
//! so code ported from Python keeps its `except` clauses as `match` arms.

use std::time::Duration;

/// A failure raised by the remote side, as carried in an oslo failure reply.
///
/// The fields are the ones oslo.messaging serialises: the exception's class
/// and module, its message, the formatted traceback, and its positional and
/// keyword arguments.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteFailure {
    /// Exception class name, e.g. `ValueError` or `NoSuchMethod`.
    pub class: String,
    /// Module the class lives in, e.g. `builtins` or `nova_rpc.dispatcher`.
    pub module: String,
    /// Human readable message.
    pub message: String,
    /// Formatted traceback lines (may be empty).
    #[serde(default)]
    pub tb: Vec<String>,
    /// Positional arguments of the exception.
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments of the exception.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl RemoteFailure {
    /// A failure with the given class, module and message, and no traceback.
    ///
    /// ```
    /// let f = nova_rpc::RemoteFailure::new("NoValidHost", "nova_services.scheduler", "no host");
    /// assert_eq!(f.args, vec![serde_json::json!("no host")]);
    /// ```
    pub fn new(class: impl Into<String>, module: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            class: class.into(),
            module: module.into(),
            args: vec![serde_json::Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: serde_json::Map::new(),
        }
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.class, self.message)
    }
}

/// Everything that can go wrong in an RPC operation.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No reply arrived within the call's timeout (oslo's `MessagingTimeout`).
    #[error("timed out waiting for a reply to {method} on {topic} after {:.1}s", .after.as_secs_f64())]
    Timeout {
        /// Topic the call was sent to.
        topic: String,
        /// Method that was called.
        method: String,
        /// How long the caller waited.
        after: Duration,
    },
    /// The remote method raised; the failure is what the server sent back.
    #[error("remote error: {0}")]
    Remote(Box<RemoteFailure>),
    /// The server has no such method (oslo's `NoSuchMethod`).
    #[error("Endpoint does not support RPC method {method}")]
    NoSuchMethod {
        /// The method that was asked for.
        method: String,
    },
    /// No endpoint offers a compatible version (oslo's `UnsupportedVersion`).
    #[error("Endpoint does not support RPC version {version}. Attempted method: {method}")]
    UnsupportedVersion {
        /// The version the caller asked for.
        version: String,
        /// The method that was asked for.
        method: String,
    },
    /// The target cannot be used for this operation (for example a call with `fanout`).
    #[error("invalid target {target}: {reason}")]
    InvalidTarget {
        /// The target, as text.
        target: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The requested version is above the client's `version_cap`.
    #[error("requested message version {version} is incompatible; version cap is {cap}")]
    VersionCap {
        /// The version asked for.
        version: String,
        /// The cap in force.
        cap: String,
    },
    /// A typed client pinned below what a method (or one of its arguments)
    /// needs: refused here, never sent for the server to refuse (oslo's
    /// class `UnsupportedVersion`).
    #[error("{method} needs RPC version {needs}, but this client is pinned to {pin} (version cap or [upgrade_levels]); it was not sent")]
    PinnedBelow {
        /// The method.
        method: String,
        /// The version it needs as called (its own, or an argument's).
        needs: String,
        /// The pin in force.
        pin: String,
    },
    /// The transport URL could not be parsed or names an unknown scheme.
    #[error("invalid transport URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mandatory message (a reply) could not be routed: its queue is gone.
    #[error("message to {destination} was returned as unroutable (NO_ROUTE)")]
    Unroutable {
        /// Where it was sent.
        destination: String,
    },
    /// The broker could not be reached, refused an operation, or went away.
    #[error("transport error: {0}")]
    Transport(String),
    /// A message could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// The message is larger than `max_message_size`.
    #[error("message of {size} bytes exceeds max_message_size of {max} bytes")]
    MessageTooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An argument was missing, unexpected or of the wrong type.
    #[error("invalid argument {argument}: {reason}")]
    InvalidArgument {
        /// Name of the argument.
        argument: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RpcError {
    /// The oslo-compatible failure that represents this error on the wire,
    /// as the server sends it back to a caller.
    pub fn to_failure(&self) -> RemoteFailure {
        const DISPATCHER: &str = "oslo_messaging.rpc.dispatcher";
        match self {
            RpcError::Remote(f) => (**f).clone(),
            RpcError::NoSuchMethod { .. } | RpcError::UnsupportedVersion { .. } => {
                // oslo puts the message itself in `args`, and no kwargs.
                RemoteFailure::new(self.class(), DISPATCHER, self.to_string())
            }
            RpcError::InvalidArgument { .. } => {
                RemoteFailure::new("InvalidArgument", "nova_rpc.dispatcher", self.to_string())
            }
            RpcError::MessageTooLarge { .. } | RpcError::Serialization(_) => {
                RemoteFailure::new("MalformedMessage", "nova_rpc.wire", self.to_string())
            }
            other => RemoteFailure::new("RpcError", "nova_rpc.error", other.to_string()),
        }
    }

    /// Turn a failure received from the wire back into the most specific
    /// error: oslo's dispatcher errors become [`RpcError::NoSuchMethod`] and
    /// [`RpcError::UnsupportedVersion`], everything else [`RpcError::Remote`].
    pub fn from_failure(failure: RemoteFailure) -> Self {
        const NO_METHOD: &str = "Endpoint does not support RPC method ";
        const NO_VERSION: &str = "Endpoint does not support RPC version ";
        match failure.class.as_str() {
            "NoSuchMethod" => {
                if let Some(method) = failure.message.strip_prefix(NO_METHOD) {
                    return RpcError::NoSuchMethod { method: method.to_owned() };
                }
            }
            "UnsupportedVersion" => {
                if let Some((version, method)) =
                    failure.message.strip_prefix(NO_VERSION).and_then(|rest| rest.split_once(". Attempted method: "))
                {
                    return RpcError::UnsupportedVersion { version: version.to_owned(), method: method.to_owned() };
                }
            }
            _ => {}
        }
        RpcError::Remote(Box::new(failure))
    }

    /// The remote failure class, when this error came from the remote side.
    pub fn class(&self) -> &str {
        match self {
            RpcError::Timeout { .. } => "MessagingTimeout",
            RpcError::Remote(f) => &f.class,
            RpcError::NoSuchMethod { .. } => "NoSuchMethod",
            RpcError::UnsupportedVersion { .. } => "UnsupportedVersion",
            RpcError::InvalidTarget { .. } => "InvalidTarget",
            RpcError::VersionCap { .. } => "RPCVersionCapError",
            RpcError::PinnedBelow { .. } => "UnsupportedVersion",
            RpcError::InvalidUrl { .. } => "InvalidTransportURL",
            RpcError::Transport(_) | RpcError::Unroutable { .. } => "MessageDeliveryFailure",
            RpcError::Serialization(_) => "SerializationError",
            RpcError::MessageTooLarge { .. } => "MessageTooLarge",
            RpcError::InvalidArgument { .. } => "InvalidArgument",
        }
    }
}

impl RpcError {
    /// A remote error with the given class, module and message, as a method
    /// returns it to its caller.
    ///
    /// ```
    /// let e = nova_rpc::RpcError::remote("NoValidHost", "nova_services.scheduler", "no compute host is up");
    /// assert_eq!(e.class(), "NoValidHost");
    /// ```
    pub fn remote(class: impl Into<String>, module: impl Into<String>, message: impl Into<String>) -> Self {
        RpcError::Remote(Box::new(RemoteFailure::new(class, module, message)))
    }
}

impl From<RemoteFailure> for RpcError {
    fn from(f: RemoteFailure) -> Self {
        RpcError::Remote(Box::new(f))
    }
}

impl From<lapin::Error> for RpcError {
    fn from(e: lapin::Error) -> Self {
        RpcError::Transport(e.to_string())
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = RpcError> = std::result::Result<T, E>;
