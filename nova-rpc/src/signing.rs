//! Signed messages, opt-in per topic, between nova-rs peers.
//!
//! oslo.messaging trusts whoever can publish on the vhost. With
//! `[rpc] signing_keys` and `[rpc] signed_topics`, a nova-rs client signs
//! every request to a signed topic, and a nova-rs server of a signed topic
//! refuses requests that are unsigned or whose signature does not verify.
//!
//! The signature is HMAC-SHA256 over the `oslo.message` string, carried in
//! one more envelope key, `"nova.signature": "<key id>:<hex>"`, which
//! oslo.messaging ignores. Each key file holds one secret; its file name
//! (without extension) is its id. The first key signs and every key
//! verifies, so keys rotate by adding the new one first, then removing the
//! old one once every peer has it. Topics that are not signed stay
//! byte-for-byte what oslo sends.
//!
//! ```
//! use nova_rpc::signing::{Signing, SignatureError};
//!
//! let signing = Signing::from_secrets(vec![("k1".into(), b"secret".to_vec())], ["secure"]);
//! let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"m\"}"}"#;
//! let signed = signing.sign(body).unwrap();
//! assert_eq!(signing.verify(&signed).unwrap(), "k1");
//! assert!(matches!(signing.verify(body), Err(SignatureError::Missing)));
//! assert!(signing.applies_to("secure") && !signing.applies_to("compute"));
//! ```

use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The envelope key that carries the signature.
pub const SIGNATURE_KEY: &str = "nova.signature";

/// Why a request's signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The request carries no signature.
    #[error("this topic takes signed requests only, and the request is not signed")]
    Missing,
    /// The signature names a key this server does not have.
    #[error("the request is signed with key {0:?}, which this server does not know")]
    UnknownKey(String),
    /// The signature does not match the message.
    #[error("the request's signature does not match its message")]
    Mismatch,
    /// The body is not an oslo envelope.
    #[error("the request is not an oslo 2.0 envelope: {0}")]
    Malformed(String),
}

impl SignatureError {
    /// The remote error class a caller sees.
    pub fn class(&self) -> &'static str {
        match self {
            SignatureError::Missing => "SignatureRequired",
            _ => "BadSignature",
        }
    }
}

/// Signing keys and the topics they apply to; see the module docs.
#[derive(Clone)]
pub struct Signing {
    keys: Vec<(String, Vec<u8>)>,
    topics: Vec<String>,
    admin_role: Option<String>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Signing").field("keys", &ids).field("topics", &self.topics).finish()
    }
}

impl Signing {
    /// Keys given directly as `(id, secret)`, the first signing.
    pub fn from_secrets<I, S>(keys: Vec<(String, Vec<u8>)>, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { keys, topics: topics.into_iter().map(Into::into).collect(), admin_role: None }
    }

    /// Keys read from files (see the module docs), for `topics`.
    pub fn load(files: &[impl AsRef<Path>], topics: Vec<String>) -> Result<Self, String> {
        let mut keys = Vec::new();
        for file in files {
            let path = file.as_ref();
            let secret = std::fs::read(path).map_err(|e| format!("signing key {}: {e}", path.display()))?;
            let secret = secret.trim_ascii().to_vec();
            if secret.len() < 16 {
                return Err(format!("signing key {} is shorter than 16 bytes", path.display()));
            }
            let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            keys.push((id, secret));
        }
        if keys.is_empty() {
            return Err("no signing keys".into());
        }
        Ok(Self { keys, topics, admin_role: None })
    }

    /// Require `role`, on a signed request, for the base API's admin methods.
    pub fn with_admin_role(mut self, role: Option<String>) -> Self {
        self.admin_role = role.filter(|r| !r.is_empty());
        self
    }

    /// The role the base API's admin methods require, if any.
    pub fn admin_role(&self) -> Option<&str> {
        self.admin_role.as_deref()
    }

    /// Whether requests to `topic` are signed.
    pub fn applies_to(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }

    fn mac(secret: &[u8], message: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        mac
    }

    /// The envelope `body` with its signature added (by the first key).
    pub fn sign(&self, body: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let (id, secret) = self.keys.first().ok_or(SignatureError::Malformed("no signing key".into()))?;
        let message = oslo_message(body)?;
        let hex: String =
            Self::mac(secret, &message).finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let end = body.iter().rposition(|b| *b == b'}').ok_or(SignatureError::Malformed("no closing brace".into()))?;
        let mut signed = Vec::with_capacity(body.len() + 100);
        signed.extend_from_slice(&body[..end]);
        signed.extend_from_slice(format!(", \"{SIGNATURE_KEY}\": \"{id}:{hex}\"}}").as_bytes());
        Ok(signed)
    }

    /// Check `body`'s signature; the id of the key that verified it.
    pub fn verify(&self, body: &[u8]) -> Result<String, SignatureError> {
        let outer: Value = serde_json::from_slice(body).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let signature = outer.get(SIGNATURE_KEY).and_then(Value::as_str).ok_or(SignatureError::Missing)?;
        let message = outer
            .get("oslo.message")
            .and_then(Value::as_str)
            .ok_or_else(|| SignatureError::Malformed("no oslo.message".into()))?;
        let (id, hex) = signature.split_once(':').ok_or(SignatureError::Mismatch)?;
        let (_, secret) =
            self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| SignatureError::UnknownKey(id.to_owned()))?;
        let bytes = decode_hex(hex).ok_or(SignatureError::Mismatch)?;
        Self::mac(secret, message).verify_slice(&bytes).map_err(|_| SignatureError::Mismatch)?;
        Ok(id.to_owned())
    }
}

fn oslo_message(body: &[u8]) -> Result<String, SignatureError> {
    let outer: Value = serde_json::from_slice(body).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    outer
        .get("oslo.message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SignatureError::Malformed("no oslo.message".into()))
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

    #[test]
    fn tampering_and_wrong_keys_are_refused() {
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"m\", \"args\": {}}"}"#;
        let signed = signing("k1", b"0123456789abcdef").sign(body).unwrap();
        let tampered = String::from_utf8(signed.clone()).unwrap().replace(r#"\"m\""#, r#"\"n\""#);
        assert_eq!(signing("k1", b"0123456789abcdef").verify(tampered.as_bytes()), Err(SignatureError::Mismatch));
        assert_eq!(signing("k1", b"another secret!!").verify(&signed), Err(SignatureError::Mismatch));
        assert_eq!(signing("k2", b"0123456789abcdef").verify(&signed), Err(SignatureError::UnknownKey("k1".into())));
        // Rotation: a server holding the old and the new key verifies both.
        let both = Signing::from_secrets(
            vec![("k2".into(), b"new secret......".to_vec()), ("k1".into(), b"0123456789abcdef".to_vec())],
            ["t"],
        );
        assert_eq!(both.verify(&signed).unwrap(), "k1");
        assert_eq!(both.verify(&both.sign(body).unwrap()).unwrap(), "k2");
    }
}
