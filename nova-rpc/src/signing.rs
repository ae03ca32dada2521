//! Signed messages, opt-in per topic, between nova-rs peers.
//!
//! oslo.messaging trusts whoever can publish on the vhost. With
//! `[rpc] signing_keys` and `[rpc] signed_topics`, a nova-rs client signs
//! every request to a signed topic, and a nova-rs server of a signed topic
//! refuses requests that are unsigned, or whose signature does not verify.
//!
//! # What a signature vouches for
//!
//! The signature travels in one more envelope key, which oslo.messaging
//! ignores: `"nova.signature": "<key id>:<timestamp ms>:<hex>"`. It is
//! HMAC-SHA256 over, each length-prefixed:
//!
//! * the `oslo.message` string: the exact text the server then decodes
//!   and serves ([`Verified::message`]), so no field outside it counts,
//!   and a body that is not an oslo 2.0 envelope is refused;
//! * where it was sent ([`Binding`]): exchange, topic, server and whether
//!   it was a fanout, so a request signed for one target is refused by
//!   servers of any other (another host, another topic sharing the key);
//! * the key id and the timestamp, which must be within `max_skew` of the
//!   server's clock (60 s by default).
//!
//! A server remembers the `_unique_id` of every signed request it accepts
//! for twice the skew window, and refuses the same id again
//! ([`Signing::remember`]); with a replay file
//! ([`Signing::with_replay_file`]) it remembers them across restarts too.
//! A reply to a signed request is signed the same way, bound to the
//! caller's reply queue, and the caller drops a reply that does not verify.
//!
//! Each key file holds one secret; its file name (without extension) is
//! its id. The first key signs and every key verifies, so keys rotate by
//! adding the new one first, then removing the old one once every peer
//! has it. Topics that are not signed stay byte-for-byte what oslo sends.
//!
//! ```
//! use nova_rpc::signing::{Binding, SignatureError, Signing};
//!
//! let signing = Signing::from_secrets(vec![("k1".into(), b"secret".to_vec())], ["secure"]);
//! let to = Binding { exchange: "nova", topic: "secure", server: Some("h1"), fanout: false };
//! let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"m\"}"}"#;
//! let signed = signing.sign(body, &to).unwrap();
//! let verified = signing.verify(&signed, &[to.clone()]).unwrap();
//! assert_eq!((verified.key_id.as_str(), verified.message.as_str()), ("k1", r#"{"method": "m"}"#));
//! let elsewhere = Binding { server: Some("h2"), ..to.clone() };
//! assert_eq!(signing.verify(&signed, &[elsewhere]).unwrap_err(), SignatureError::Mismatch);
//! assert!(matches!(signing.verify(body, &[to]), Err(SignatureError::Missing)));
//! assert!(signing.applies_to("secure") && !signing.applies_to("compute"));
//! ```

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The envelope key that carries the signature.
pub const SIGNATURE_KEY: &str = "nova.signature";

/// How far a signature's timestamp may be from the server's clock, unless
/// configured (`[rpc] signing_max_skew`).
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(60);

/// What is hashed first, so a signature of this scheme is never valid in
/// any other use of the same key.
const DOMAIN: &[u8] = b"nova-rs signed message v2";

/// Why a request's signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The request carries no signature.
    #[error("this topic takes signed requests only, and the request is not signed")]
    Missing,
    /// The signature names a key this server does not have.
    #[error("the request is signed with key {0:?}, which this server does not know")]
    UnknownKey(String),
    /// The signature does not match the message and where it was sent.
    #[error("the request's signature does not match its message and target")]
    Mismatch,
    /// The signature's timestamp is too far from this server's clock.
    #[error("the request was signed {skew_s} s away from this server's clock (at most {max_s} s)")]
    Stale {
        /// Whole seconds between the timestamp and now.
        skew_s: u64,
        /// The most allowed.
        max_s: u64,
    },
    /// A signed request with this `_unique_id` was accepted before.
    #[error("a signed request with _unique_id {0} was already accepted: replays are refused")]
    Replayed(String),
    /// The body is not an oslo 2.0 envelope, or its signature is unreadable.
    #[error("the request is not a signed oslo 2.0 envelope: {0}")]
    Malformed(String),
}

impl SignatureError {
    /// The remote error class a caller sees.
    pub fn class(&self) -> &'static str {
        match self {
            SignatureError::Missing => "SignatureRequired",
            SignatureError::Replayed(_) => "ReplayedRequest",
            _ => "BadSignature",
        }
    }
}

/// Why signing keys or a replay file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read.
    #[error("signing key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is too short to be a secret.
    #[error("signing key {0} is shorter than 16 bytes")]
    Short(PathBuf),
    /// No key was given.
    #[error("no signing keys")]
    NoKeys,
    /// The replay file could not be read or written.
    #[error("signing replay file {path}: {source}")]
    ReplayFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a message was sent: what a signature binds it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The exchange (empty for a reply, which goes to its queue directly).
    pub exchange: &'a str,
    /// The topic (a reply's queue name).
    pub topic: &'a str,
    /// The server, when the message was addressed to one.
    pub server: Option<&'a str>,
    /// Whether it went to every server of the topic.
    pub fanout: bool,
}

impl Binding<'_> {
    /// The targets a server of `topic` on `server` takes messages for: the
    /// topic, its own queue, and the topic's fanout.
    pub fn served<'a>(exchange: &'a str, topic: &'a str, server: &'a str) -> [Binding<'a>; 3] {
        [
            Binding { exchange, topic, server: None, fanout: false },
            Binding { exchange, topic, server: Some(server), fanout: false },
            Binding { exchange, topic, server: None, fanout: true },
        ]
    }

    /// A reply, sent straight to the caller's `queue`.
    pub fn reply(queue: &str) -> Binding<'_> {
        Binding { exchange: "", topic: queue, server: None, fanout: false }
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key that verified it.
    pub key_id: String,
    /// The signed `oslo.message` text: what is to be decoded and served.
    pub message: String,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The `_unique_id`s of signed requests accepted within the replay window,
/// and where they are kept across restarts.
#[derive(Default)]
struct Replays {
    seen: HashMap<String, i64>,
    file: Option<(PathBuf, std::fs::File)>,
}

impl Replays {
    /// Forget what is older than `oldest` (ms).
    fn prune(&mut self, oldest: i64) {
        self.seen.retain(|_, ts| *ts >= oldest);
    }
}

/// Signing keys and the topics they apply to; see the module docs.
#[derive(Clone)]
pub struct Signing {
    keys: Vec<(String, Vec<u8>)>,
    topics: Vec<String>,
    admin_role: Option<String>,
    max_skew: Duration,
    replays: Arc<Mutex<Replays>>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Signing").field("keys", &ids).field("topics", &self.topics).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Signing {
    /// Keys given directly as `(id, secret)`, the first signing.
    pub fn from_secrets<I, S>(keys: Vec<(String, Vec<u8>)>, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            keys,
            topics: topics.into_iter().map(Into::into).collect(),
            admin_role: None,
            max_skew: DEFAULT_MAX_SKEW,
            replays: Arc::default(),
        }
    }

    /// Keys read from files (see the module docs), for `topics`.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, a key shorter than 16 bytes, or no key.
    pub fn load(files: &[impl AsRef<Path>], topics: Vec<String>) -> Result<Self, SigningError> {
        let mut keys = Vec::new();
        for file in files {
            let path = file.as_ref();
            let secret = std::fs::read(path).map_err(|source| SigningError::Read { path: path.into(), source })?;
            let secret = secret.trim_ascii().to_vec();
            if secret.len() < 16 {
                return Err(SigningError::Short(path.into()));
            }
            let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            keys.push((id, secret));
        }
        if keys.is_empty() {
            return Err(SigningError::NoKeys);
        }
        Ok(Self::from_secrets(keys, topics))
    }

    /// Require `role`, on a signed request, for the base API's admin methods.
    pub fn with_admin_role(mut self, role: Option<String>) -> Self {
        self.admin_role = role.filter(|r| !r.is_empty());
        self
    }

    /// Accept timestamps at most `skew` from this clock (the replay window
    /// is twice that).
    pub fn with_max_skew(mut self, skew: Duration) -> Self {
        self.max_skew = skew;
        self
    }

    /// Remember accepted `_unique_id`s in `path` too, so a restart does not
    /// forget them: the ids still within the window are read back now, and
    /// the file is rewritten with just those.
    ///
    /// # Errors
    ///
    /// The file cannot be read, rewritten or opened for appending.
    pub fn with_replay_file(self, path: impl Into<PathBuf>) -> Result<Self, SigningError> {
        let path = path.into();
        let fail = |source| SigningError::ReplayFile { path: path.clone(), source };
        let oldest = now_ms() - self.window_ms();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(fail(e)),
        };
        let kept: HashMap<String, i64> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(ts, id)| Some((id.to_owned(), ts.parse::<i64>().ok()?)))
            .filter(|(_, ts)| *ts >= oldest)
            .collect();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let compacted: String = kept.iter().map(|(id, ts)| format!("{ts} {id}\n")).collect();
        let fresh = path.with_extension("new");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&fresh)
                .map_err(fail)?;
            f.write_all(compacted.as_bytes()).map_err(fail)?;
        }
        std::fs::rename(&fresh, &path).map_err(fail)?;
        let file = std::fs::OpenOptions::new().append(true).create(true).open(&path).map_err(fail)?;
        {
            let mut replays = crate::lock(&self.replays);
            replays.seen.extend(kept);
            replays.file = Some((path, file));
        }
        Ok(self)
    }

    /// The role the base API's admin methods require, if any.
    pub fn admin_role(&self) -> Option<&str> {
        self.admin_role.as_deref()
    }

    /// Whether requests to `topic` are signed.
    pub fn applies_to(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.max_skew.as_millis() * 2).unwrap_or(i64::MAX)
    }

    fn mac(secret: &[u8], key_id: &str, timestamp_ms: i64, to: &Binding<'_>, message: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
        let ts = timestamp_ms.to_string();
        let fanout: &[u8] = if to.fanout { b"fanout" } else { b"direct" };
        let server = to.server.unwrap_or("").as_bytes();
        for part in [DOMAIN, key_id.as_bytes(), ts.as_bytes(), to.exchange.as_bytes(), to.topic.as_bytes()]
            .into_iter()
            .chain([server, fanout, message.as_bytes()])
        {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The envelope `body` with its signature added (by the first key),
    /// bound to `to` and to this moment.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Malformed`] when `body` is not an oslo 2.0 envelope.
    pub fn sign(&self, body: &[u8], to: &Binding<'_>) -> Result<Vec<u8>, SignatureError> {
        let (id, secret) = self.keys.first().ok_or(SignatureError::Malformed("no signing key".into()))?;
        let message = envelope(body)?.1;
        let ts = now_ms();
        let hex: String = Self::mac(secret, id, ts, to, &message)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let end = body.iter().rposition(|b| *b == b'}').ok_or(SignatureError::Malformed("no closing brace".into()))?;
        let mut signed = Vec::with_capacity(body.len() + 100);
        signed.extend_from_slice(&body[..end]);
        signed.extend_from_slice(format!(", \"{SIGNATURE_KEY}\": \"{id}:{ts}:{hex}\"}}").as_bytes());
        Ok(signed)
    }

    /// Check `body`'s signature against where it may have been sent
    /// (`candidates`) and the clock; what it vouches for.
    ///
    /// # Errors
    ///
    /// Every [`SignatureError`] but [`SignatureError::Replayed`], which
    /// [`remember`](Self::remember) gives.
    pub fn verify(&self, body: &[u8], candidates: &[Binding<'_>]) -> Result<Verified, SignatureError> {
        let (outer, message) = envelope(body)?;
        let signature = outer.get(SIGNATURE_KEY).and_then(Value::as_str).ok_or(SignatureError::Missing)?;
        let mut parts = signature.splitn(3, ':');
        let (Some(id), Some(ts), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SignatureError::Malformed("the signature is not <key>:<timestamp>:<hex>".into()));
        };
        let timestamp_ms: i64 =
            ts.parse().map_err(|_| SignatureError::Malformed("the signature's timestamp is not a number".into()))?;
        let skew = now_ms().saturating_sub(timestamp_ms).unsigned_abs();
        if u128::from(skew) > self.max_skew.as_millis() {
            return Err(SignatureError::Stale { skew_s: skew / 1000, max_s: self.max_skew.as_secs() });
        }
        let (_, secret) =
            self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| SignatureError::UnknownKey(id.to_owned()))?;
        let bytes = decode_hex(hex).ok_or(SignatureError::Mismatch)?;
        let matches =
            candidates.iter().any(|to| Self::mac(secret, id, timestamp_ms, to, &message).verify_slice(&bytes).is_ok());
        if !matches {
            return Err(SignatureError::Mismatch);
        }
        Ok(Verified { key_id: id.to_owned(), message, timestamp_ms })
    }

    /// Accept a verified request's `_unique_id` once: an id seen within the
    /// replay window (or, with a replay file, before a restart) is refused.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Replayed`] for an id accepted before, and
    /// [`SignatureError::Malformed`] for a signed request without one.
    /// `receiver` names who accepts it (`topic.server`): a fanout reaches
    /// every server of a topic, each once, even in one process.
    pub fn remember(&self, receiver: &str, unique_id: &str, timestamp_ms: i64) -> Result<(), SignatureError> {
        if unique_id.is_empty() {
            return Err(SignatureError::Malformed("a signed request needs a _unique_id".into()));
        }
        let key = format!("{receiver}/{unique_id}");
        let mut replays = crate::lock(&self.replays);
        if replays.seen.contains_key(&key) {
            return Err(SignatureError::Replayed(unique_id.to_owned()));
        }
        if replays.seen.len() >= 1024 && replays.seen.len().is_power_of_two() {
            replays.prune(now_ms() - self.window_ms());
        }
        replays.seen.insert(key.clone(), timestamp_ms);
        if let Some((path, file)) = &mut replays.file {
            if let Err(e) = writeln!(file, "{timestamp_ms} {key}") {
                tracing::warn!(file = %path.display(), error = %e, "cannot record a signed request's id for after a restart");
            }
        }
        Ok(())
    }
}

/// The outer object of an oslo 2.0 envelope and its `oslo.message` text.
fn envelope(body: &[u8]) -> Result<(serde_json::Map<String, Value>, String), SignatureError> {
    let outer: Value = serde_json::from_slice(body).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let Value::Object(mut outer) = outer else {
        return Err(SignatureError::Malformed("the body is not a JSON object".into()));
    };
    let version = outer.get("oslo.version").and_then(Value::as_str).unwrap_or("");
    if version.split('.').next() != Some("2") {
        return Err(SignatureError::Malformed("signed messages are oslo 2.0 envelopes, with oslo.version".into()));
    }
    match outer.remove("oslo.message") {
        Some(Value::String(message)) => Ok((outer, message)),
        _ => Err(SignatureError::Malformed("no oslo.message string".into())),
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signing(id: &str, secret: &[u8]) -> Signing {
        Signing::from_secrets(vec![(id.into(), secret.to_vec())], ["t"])
    }

    const TO: Binding<'static> = Binding { exchange: "nova", topic: "t", server: None, fanout: false };
    const BODY: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"m\", \"args\": {}}"}"#;

    #[test]
    fn tampering_and_wrong_keys_are_refused() {
        let signed = signing("k1", b"0123456789abcdef").sign(BODY, &TO).unwrap();
        let tampered = String::from_utf8(signed.clone()).unwrap().replace(r#"\"m\""#, r#"\"n\""#);
        assert_eq!(
            signing("k1", b"0123456789abcdef").verify(tampered.as_bytes(), &[TO]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(signing("k1", b"another secret!!").verify(&signed, &[TO]), Err(SignatureError::Mismatch));
        assert_eq!(
            signing("k2", b"0123456789abcdef").verify(&signed, &[TO]),
            Err(SignatureError::UnknownKey("k1".into()))
        );
        // Rotation: a server holding the old and the new key verifies both.
        let both = Signing::from_secrets(
            vec![("k2".into(), b"new secret......".to_vec()), ("k1".into(), b"0123456789abcdef".to_vec())],
            ["t"],
        );
        assert_eq!(both.verify(&signed, &[TO]).unwrap().key_id, "k1");
        assert_eq!(both.verify(&both.sign(BODY, &TO).unwrap(), &[TO]).unwrap().key_id, "k2");
    }

    #[test]
    fn a_signature_binds_its_target() {
        let s = signing("k1", b"0123456789abcdef");
        let signed = s.sign(BODY, &TO).unwrap();
        for other in [
            Binding { exchange: "other", ..TO },
            Binding { topic: "t2", ..TO },
            Binding { server: Some("h1"), ..TO },
            Binding { fanout: true, ..TO },
        ] {
            assert_eq!(s.verify(&signed, &[other]), Err(SignatureError::Mismatch));
        }
        assert!(s.verify(&signed, &Binding::served("nova", "t", "h1")).is_ok(), "a server of the topic takes it");
        assert!(s.verify(&signed, &Binding::served("nova", "t2", "h1")).is_err());
    }

    #[test]
    fn only_the_signed_message_counts() {
        let s = signing("k1", b"0123456789abcdef");
        let signed = String::from_utf8(s.sign(BODY, &TO).unwrap()).unwrap();
        // Outer keys beside the envelope, or a bare message, carry nothing.
        let verified = s.verify(
            signed.replace(r#""oslo.version": "2.0", "#, r#""method": "evil", "oslo.version": "2.0", "#).as_bytes(),
            &[TO],
        );
        assert_eq!(verified.unwrap().message, r#"{"method": "m", "args": {}}"#);
        let bare = signed.replace(r#""oslo.version": "2.0", "#, r#""method": "evil", "#);
        assert!(matches!(s.verify(bare.as_bytes(), &[TO]), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn stale_and_replayed_requests_are_refused() {
        let s = signing("k1", b"0123456789abcdef").with_max_skew(Duration::from_secs(5));
        let old = now_ms() - 60_000;
        let (id, secret) = &s.keys[0];
        let hex: String = Signing::mac(secret, id, old, &TO, r#"{"method": "m", "args": {}}"#)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stale = format!(
            r#"{{"oslo.version": "2.0", "oslo.message": "{{\"method\": \"m\", \"args\": {{}}}}", "nova.signature": "k1:{old}:{hex}"}}"#
        );
        assert!(matches!(s.verify(stale.as_bytes(), &[TO]), Err(SignatureError::Stale { .. })));
        let verified = s.verify(&s.sign(BODY, &TO).unwrap(), &[TO]).unwrap();
        s.remember("t.h1", "u1", verified.timestamp_ms).unwrap();
        assert_eq!(s.remember("t.h1", "u1", verified.timestamp_ms), Err(SignatureError::Replayed("u1".into())));
        s.remember("t.h2", "u1", verified.timestamp_ms).expect("another server of a fanout takes it once too");
        assert!(s.remember("t.h1", "", verified.timestamp_ms).is_err(), "a signed request needs an id");
    }

    #[test]
    fn replays_are_remembered_across_restarts() {
        let dir = std::env::temp_dir().join(format!("nova-replay-{}", std::process::id()));
        let path = dir.join("signed-ids");
        let first = signing("k1", b"0123456789abcdef").with_replay_file(&path).unwrap();
        first.remember("t.h1", "u1", now_ms()).unwrap();
        first.remember("t.h1", "old", now_ms() - 10 * 60_000).unwrap();
        drop(first);
        let restarted = signing("k1", b"0123456789abcdef").with_replay_file(&path).unwrap();
        assert_eq!(restarted.remember("t.h1", "u1", now_ms()), Err(SignatureError::Replayed("u1".into())));
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(!kept.contains("/old\n"), "ids past the window are dropped: {kept}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
