//! The 2.0 envelope: `{"oslo.version": "2.0", "oslo.message": "<inner
//! JSON>"}`. An inner message is written key by key straight into the
//! envelope's string ([`ObjectWriter`]), each `"` and `\` of it escaped
//! once more as it goes, so nothing is scanned or copied afterwards; and a
//! body that is exactly the envelope as oslo writes it is opened without
//! building the outer object ([`open_exact`]).

use serde::Serialize;

use super::{scan, Error, Writer};

/// What comes before the inner JSON (the string's opening quote included).
pub(crate) const HEAD: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": ""#;
/// What comes after it.
pub(crate) const TAIL: &[u8] = b"\"}";

/// Writes an inner message key by key, Python style, straight
/// into its buffer. `enveloped`: inside the 2.0 envelope's string, so every
/// `"` and `\` of the inner JSON is written escaped once more as it goes,
/// and nothing is scanned or copied afterwards. Arguments and results are
/// JSON text already (`Payload`): they are copied in, escaped for the
/// envelope.
pub(crate) struct ObjectWriter {
    out: Vec<u8>,
    enveloped: bool,
    first: bool,
}

impl ObjectWriter {
    pub(crate) fn new(capacity: usize, enveloped: bool) -> Self {
        let mut out = Vec::with_capacity(capacity);
        if enveloped {
            out.extend_from_slice(HEAD);
        }
        out.push(b'{');
        Self { out, enveloped, first: true }
    }

    /// The JSON writer, on this message's buffer.
    fn json(&mut self) -> Writer<'_> {
        Writer { out: &mut self.out, enveloped: self.enveloped }
    }

    /// What comes before the next key: `", "` unless it is the first, and its opening quote.
    fn open_key(&mut self) {
        let open: &[u8] = match (std::mem::take(&mut self.first), self.enveloped) {
            (true, true) => b"\\\"",
            (true, false) => b"\"",
            (false, true) => b", \\\"",
            (false, false) => b", \"",
        };
        self.out.extend_from_slice(open);
    }

    /// What comes after a key: its closing quote and `": "`.
    fn close_key(&mut self) -> &mut Self {
        self.out.extend_from_slice(if self.enveloped { b"\\\": " } else { b"\": " });
        self
    }

    /// The next key, one of the message's own (plain ASCII, written as it is).
    pub(crate) fn field(&mut self, key: &'static str) -> &mut Self {
        self.open_key();
        self.out.extend_from_slice(key.as_bytes());
        self.close_key()
    }

    /// The next key: `prefix` (plain ASCII) then `key`, as one JSON string.
    pub(crate) fn key(&mut self, prefix: &'static str, key: &str) -> &mut Self {
        self.open_key();
        self.out.extend_from_slice(prefix.as_bytes());
        self.json().contents(key);
        self.close_key()
    }

    pub(crate) fn string(&mut self, s: &str) {
        self.json().string(s);
    }

    pub(crate) fn opt_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A list of strings.
    pub(crate) fn strings(&mut self, list: &[String]) {
        self.out.push(b'[');
        for (i, s) in list.iter().enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.string(s);
        }
        self.out.push(b']');
    }

    /// `null`, `true` or `false`.
    pub(crate) fn literal(&mut self, literal: Literal) {
        self.out.extend_from_slice(match literal {
            Literal::Null => b"null",
            Literal::True => b"true",
            Literal::False => b"false",
        });
    }

    /// JSON text, copied in (escaped for the envelope).
    pub(crate) fn raw(&mut self, json: &str) {
        self.json().raw(json);
    }

    /// Any value.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        super::write(value, &mut self.out, self.enveloped)
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        if self.enveloped {
            self.out.extend_from_slice(TAIL);
        }
        self.out
    }
}

/// The JSON literals a message writes by themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Literal {
    Null,
    True,
    False,
}

impl From<bool> for Literal {
    fn from(b: bool) -> Self {
        if b {
            Literal::True
        } else {
            Literal::False
        }
    }
}

/// The inner message of a body that is exactly the envelope as oslo and
/// nova-rs write it (`{"oslo.version": "2.0", "oslo.message": "…"}`), its
/// only escapes the `\"` and `\\` that quoting ASCII JSON makes, unescaped
/// without building the outer object; `None` for any other shape, which
/// the general path then reads.
pub(crate) fn open_exact(body: &[u8]) -> Option<String> {
    let head = &HEAD[..HEAD.len() - 1];
    let quoted = body.strip_prefix(head)?.strip_suffix(b"}")?;
    let rest = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(rest.len() + 8);
    scan::copy_runs::<false>(rest, &mut out, |from, out| match from {
        [b'\\', escaped @ (b'"' | b'\\'), ..] => {
            out.push(*escaped);
            Some(2)
        }
        // An unescaped quote ends the string early; a raw control
        // character is not allowed in one.
        _ => None,
    })?;
    String::from_utf8(out).ok()
}
