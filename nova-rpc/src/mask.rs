//! Secrets out of sight: one place that decides what a secret looks like,
//! as oslo.utils' `mask_password` does for OpenStack, used wherever a value
//! that came from a user may be shown: log lines, error messages, records,
//! trace spans and metrics.
//!
//! What is masked (replaced by `***`):
//!
//! * the password of a URL's userinfo (`https://user:***@host/`), the
//!   whole userinfo of a URL that has no user name, and every password of a
//!   failover list of transport URLs;
//! * the value of a secret key: `password=…`, `token: …`, `"secret": "…"`,
//!   `--api-key=…`, and the argument after a secret flag (`--password
//!   hunter2`), where a key is secret when its name contains one of
//!   [`SECRET_WORDS`], in any case, with `-` and `_` alike.
//!
//! ```
//! use nova_rpc::mask::mask_password;
//! assert_eq!(mask_password("POST to https://bob:hunter2@example.com/cb failed"), "POST to https://bob:***@example.com/cb failed");
//! assert_eq!(mask_password("run --password=hunter2 --user bob"), "run --password=*** --user bob");
//! assert_eq!(mask_password(r#"{"auth_token": "abc", "n": 1}"#), r#"{"auth_token": "***", "n": 1}"#);
//! ```

use serde_json::Value;

/// Words that make a key, flag or field secret.
pub const SECRET_WORDS: &[&str] =
    &["password", "passwd", "passphrase", "token", "secret", "credential", "api_key", "apikey", "private_key"];

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Whether a key or flag name (`--admin-password`, `authToken`) names a secret.
pub fn is_secret_key(name: &str) -> bool {
    let name: String =
        name.trim_start_matches('-').chars().map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() }).collect();
    !name.is_empty() && SECRET_WORDS.iter().any(|w| name.contains(w))
}

/// `text` with every secret it shows masked; see the module docs.
pub fn mask_password(text: &str) -> String {
    mask_key_values(&mask_urls(text))
}

/// A JSON value with secrets masked: the values of secret keys, secrets in
/// strings, and, in an array of command-line arguments, the argument that
/// follows a secret flag.
pub fn mask_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), if is_secret_key(k) { Value::from(MASK) } else { mask_value(v) }))
                .collect(),
        ),
        Value::Array(items) => Value::Array(mask_args(items)),
        Value::String(s) => Value::String(mask_password(s)),
        other => other.clone(),
    }
}

/// Command-line arguments with secrets masked: `--password=x`, and the
/// argument after a bare `--password`.
pub fn mask_args(args: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_secret = false;
    for arg in args {
        if std::mem::take(&mut next_is_secret) && arg.is_string() {
            out.push(Value::from(MASK));
            continue;
        }
        if let Some(s) = arg.as_str() {
            next_is_secret = s.starts_with('-') && !s.contains('=') && is_secret_key(s);
        }
        out.push(mask_value(arg));
    }
    out
}

/// The same for arguments as strings.
pub fn mask_arg_strings(args: &[String]) -> Vec<String> {
    let values: Vec<Value> = args.iter().map(|a| Value::from(a.as_str())).collect();
    mask_args(&values).into_iter().map(|v| v.as_str().unwrap_or(MASK).to_owned()).collect()
}

/// Where a URL inside free text ends.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | '}')
}

/// Mask the userinfo of every `scheme://…@` in `text`.
fn mask_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, `+ - .` before the `://`.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        let end = rest[i + 3..].find(ends_token).map_or(rest.len(), |e| i + 3 + e);
        out.push_str(&rest[..start]);
        let url = &rest[start..end];
        out.push_str(&mask_url(url));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One URL with its credentials masked: transport URLs (failover lists,
/// passwords holding `@` or `/`) as [`TransportUrl::mask`](crate::transport::TransportUrl::mask)
/// does, and a userinfo with no `user:` (a bare token) whole.
fn mask_url(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else { return url.to_owned() };
    let Some(at) = after.rfind('@') else { return url.to_owned() };
    let userinfo = &after[..at];
    if userinfo.contains(':') {
        crate::transport::TransportUrl::mask(url)
    } else if userinfo.is_empty() {
        url.to_owned()
    } else {
        format!("{scheme}://{MASK}@{}", &after[at + 1..])
    }
}

/// Mask the value after every secret key in `text`: `key=value`,
/// `key: value`, `"key": "value"`, `--key value`.
fn mask_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // A key is a run of word characters (and `-`), maybe quoted.
        if !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-') {
            i += 1;
            continue;
        }
        let key_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-') {
            i += 1;
        }
        let key = &text[key_start..i];
        if !is_secret_key(key) {
            continue;
        }
        // What separates it from its value: `=`, `:`, or (for a flag) a space.
        let mut j = i;
        if bytes.get(j).is_some_and(|b| matches!(b, b'"' | b'\'')) {
            j += 1;
        }
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        let separated = match bytes.get(j) {
            Some(b'=' | b':') => {
                j += 1;
                true
            }
            _ => key.starts_with("--") && j > i,
        };
        if !separated {
            continue;
        }
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        let (value_start, quote) = match bytes.get(j) {
            Some(q @ (b'"' | b'\'')) => (j + 1, Some(*q)),
            _ => (j, None),
        };
        let value_end = match quote {
            Some(q) => text[value_start..].find(char::from(q)).map_or(text.len(), |e| value_start + e),
            None => text[value_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '&' | '}' | ']' | ')'))
                .map_or(text.len(), |e| value_start + e),
        };
        if value_end > value_start && &text[value_start..value_end] != MASK {
            out.push_str(&text[copied..value_start]);
            out.push_str(MASK);
            copied = value_end;
        }
        i = value_end.max(i);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_oslo_masks_is_masked() {
        for (given, want) in [
            ("password=hunter2", "password=***"),
            ("admin_password = 'hunter2' x", "admin_password = '***' x"),
            (r#"{"token": "abc.def", "ok": true}"#, r#"{"token": "***", "ok": true}"#),
            ("--api-key=xyz --verbose", "--api-key=*** --verbose"),
            ("--db-password hunter2 --port 5", "--db-password *** --port 5"),
            (
                "amqp://nova:s3cr3t@rabbit1:5672,nova:s3cr3t@rabbit2:5672/",
                "amqp://nova:***@rabbit1:5672,nova:***@rabbit2:5672/",
            ),
            ("see https://ghp_abcdef@github.example/x", "see https://***@github.example/x"),
            ("nothing secret here: ok=1", "nothing secret here: ok=1"),
            ("tokens", "tokens"),
        ] {
            assert_eq!(mask_password(given), want, "{given}");
        }
    }

    #[test]
    fn arguments_and_json_are_masked() {
        let args = json!(["--user", "bob", "--password", "hunter2", "--token=abc", "plain"]);
        assert_eq!(mask_value(&args), json!(["--user", "bob", "--password", "***", "--token=***", "plain"]));
        let nested = json!({"db": {"url": "postgresql://u:pw@db/x", "secret_key": 5}, "list": ["a"]});
        assert_eq!(
            mask_value(&nested),
            json!({"db": {"url": "postgresql://u:***@db/x", "secret_key": "***"}, "list": ["a"]})
        );
    }
}
