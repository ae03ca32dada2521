//! A notification on the wire: written key by key in oslo's order, and
//! read back from either format.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{Metadata, Notification, Priority};
use crate::{pyjson::envelope::ObjectWriter, wire::json_type, wire::Malformed, RequestContext, RpcError};

/// A notification about to be encoded, borrowing its parts.
#[derive(Debug, Clone, Copy)]
pub struct NotificationRef<'a> {
    /// A UUID with dashes (`str(uuid.uuid4())`).
    pub message_id: &'a str,
    /// Who sends it.
    pub publisher_id: &'a str,
    /// What happened.
    pub event_type: &'a str,
    /// How much it matters.
    pub priority: Priority,
    /// The payload, as JSON text written by [`crate::pyjson`].
    pub payload: &'a str,
    /// [`utc_timestamp`] of when it was sent.
    pub timestamp: &'a str,
    /// `_unique_id` (32 hex digits).
    pub unique_id: &'a str,
    /// The sender's context; secrets are masked, as oslo's
    /// `redacted_copy` masks them. `None`: no `_context_*` keys (what oslo
    /// sends for a plain dictionary).
    pub context: Option<&'a RequestContext>,
}

/// Encode `n` as oslo's `messagingv2` driver does (`enveloped`: the 2.0
/// envelope) or its `messaging` driver (a bare message).
///
/// # Errors
///
/// A context value that cannot be written.
pub fn encode(n: &NotificationRef<'_>, enveloped: bool) -> Result<Vec<u8>, RpcError> {
    let mut w = ObjectWriter::new(256 + n.payload.len(), enveloped);
    w.field("message_id").string(n.message_id);
    w.field("publisher_id").string(n.publisher_id);
    w.field("event_type").string(n.event_type);
    w.field("priority").string(n.priority.as_str());
    w.field("payload").raw(n.payload);
    w.field("timestamp").string(n.timestamp);
    w.field("_unique_id").string(n.unique_id);
    if let Some(context) = n.context {
        crate::wire::encode::write_context(&mut w, context, true)?;
    }
    Ok(w.finish())
}

/// Read a notification sent by either driver. What oslo's listener would
/// refuse (no priority, a payload-less message) is refused with the reason.
///
/// # Errors
///
/// [`Malformed`], saying what is wrong.
pub fn decode(body: &[u8]) -> Result<Notification, Malformed> {
    let mut message = crate::wire::decode_message(body)?;
    let mut text = |key: &str| match message.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Malformed::new(format!("{key} is {}, not a string", json_type(&other)))),
        None => Err(Malformed::new(format!("the notification has no {key}"))),
    };
    let priority_name = text("priority")?;
    let priority =
        Priority::parse(&priority_name).ok_or_else(|| Malformed::new(format!("unknown priority {priority_name:?}")))?;
    let publisher_id = text("publisher_id")?;
    let event_type = text("event_type")?;
    let message_id = text("message_id")?;
    let timestamp = text("timestamp")?;
    let payload = message.remove("payload").unwrap_or(Value::Null);
    let ctxt: Map<String, Value> =
        message.into_iter().filter_map(|(k, v)| k.strip_prefix("_context_").map(|k| (k.to_owned(), v))).collect();
    Ok(Notification { priority, publisher_id, event_type, payload, metadata: Metadata { message_id, timestamp }, ctxt })
}

/// `time` in UTC as Python's `str(datetime)` writes it: microseconds
/// only when there are any (`2026-12-07 08:30:00` or `…:00.123456`).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_micros(1_796_632_200_123_456);
/// assert_eq!(nova_rpc::notify::utc_timestamp(t), "2026-12-07 08:30:00.123456");
/// assert_eq!(nova_rpc::notify::utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00");
/// ```
pub fn utc_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    match since.subsec_micros() {
        0 => format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}"),
        us => format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{us:06}"),
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(context: Option<&RequestContext>) -> NotificationRef<'_> {
        NotificationRef {
            message_id: "4c2d3a4e-6f57-4a1b-9d3c-2b1f0e9d8c7b",
            publisher_id: "compute.host1",
            event_type: "task.run.end",
            priority: Priority::Info,
            payload: r#"{"task_id": "t1", "exit_code": 0}"#,
            timestamp: "2026-12-07 08:30:00.123456",
            unique_id: "0123456789abcdef0123456789abcdef",
            context,
        }
    }

    #[test]
    fn both_formats_read_back() {
        let ctx = RequestContext::new().with_user("u", "p").with_extra("auth_token", "s3cret".into());
        for enveloped in [true, false] {
            let body = encode(&sample(Some(&ctx)), enveloped).unwrap();
            let n = decode(&body).unwrap();
            assert_eq!(n.priority, Priority::Info);
            assert_eq!(n.event_type, "task.run.end");
            assert_eq!(n.payload["exit_code"], 0);
            assert_eq!(n.metadata.timestamp, "2026-12-07 08:30:00.123456");
            assert_eq!(n.ctxt["user_id"], "u");
            assert_eq!(n.ctxt["auth_token"], "***", "secrets never leave in a notification");
        }
        let bare = String::from_utf8(encode(&sample(None), false).unwrap()).unwrap();
        assert!(bare.starts_with(r#"{"message_id": "4c2d"#) && !bare.contains("_context_"), "{bare}");
    }

    #[test]
    fn what_is_not_a_notification_says_why() {
        let no_priority =
            br#"{"message_id": "m", "publisher_id": "p", "event_type": "e", "payload": {}, "timestamp": "t"}"#;
        assert!(decode(no_priority).unwrap_err().reason.contains("priority"));
        let odd =
            br#"{"message_id": "m", "publisher_id": "p", "event_type": "e", "priority": "LOUD", "timestamp": "t"}"#;
        assert!(decode(odd).unwrap_err().reason.contains("LOUD"));
        assert!(decode(b"[1]").is_err());
    }

    #[test]
    fn timestamps_are_pythons() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(t), "2000-02-29 00:00:00");
        let t = UNIX_EPOCH + std::time::Duration::from_micros(4_102_444_799_000_001);
        assert_eq!(utc_timestamp(t), "2099-12-31 23:59:59.000001");
    }
}
