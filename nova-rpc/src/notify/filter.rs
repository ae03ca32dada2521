//! Which notifications an endpoint wants, by regular expression, as
//! oslo's `NotificationFilter`.

use regex::Regex;
use serde_json::{Map, Value};

use super::Notification;

/// Matches a notification when every expression given matches: the
/// publisher id, the event type, and named keys of the context, the
/// metadata and the payload. Each expression must match at the start of
/// the text, as Python's `re.match` does (`task\.` matches
/// `task.run.end`); a key that is missing or not a string does not match.
///
/// ```
/// use nova_rpc::notify::NotificationFilter;
/// let f = NotificationFilter::new().event_type(r"task\.run\.").unwrap().payload("status", "^error$").unwrap();
/// # let _ = f;
/// ```
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    publisher_id: Option<Regex>,
    event_type: Option<Regex>,
    context: Vec<(String, Regex)>,
    metadata: Vec<(String, Regex)>,
    payload: Vec<(String, Regex)>,
}

/// `pattern`, anchored at the start as `re.match` is.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})"))
}

impl NotificationFilter {
    /// Matches everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// The publisher id must match `pattern`.
    ///
    /// # Errors
    ///
    /// A pattern that is not a regular expression.
    pub fn publisher_id(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.publisher_id = Some(compile(pattern)?);
        Ok(self)
    }

    /// The event type must match `pattern`.
    ///
    /// # Errors
    ///
    /// A pattern that is not a regular expression.
    pub fn event_type(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.event_type = Some(compile(pattern)?);
        Ok(self)
    }

    /// The context's `key` must be a string matching `pattern`.
    ///
    /// # Errors
    ///
    /// A pattern that is not a regular expression.
    pub fn context(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.context.push((key.to_owned(), compile(pattern)?));
        Ok(self)
    }

    /// The metadata's `key` (`message_id` or `timestamp`) must match `pattern`.
    ///
    /// # Errors
    ///
    /// A pattern that is not a regular expression.
    pub fn metadata(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.metadata.push((key.to_owned(), compile(pattern)?));
        Ok(self)
    }

    /// The payload's `key` must be a string matching `pattern`.
    ///
    /// # Errors
    ///
    /// A pattern that is not a regular expression.
    pub fn payload(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.payload.push((key.to_owned(), compile(pattern)?));
        Ok(self)
    }

    /// Whether `n` passes.
    pub fn matches(&self, n: &Notification) -> bool {
        let text = |re: &Option<Regex>, s: &str| re.as_ref().is_none_or(|re| re.is_match(s));
        let keys = |rules: &[(String, Regex)], map: &Map<String, Value>| {
            rules.iter().all(|(k, re)| map.get(k).and_then(Value::as_str).is_some_and(|s| re.is_match(s)))
        };
        let metadata = |k: &str| match k {
            "message_id" => Some(n.metadata.message_id.as_str()),
            "timestamp" => Some(n.metadata.timestamp.as_str()),
            _ => None,
        };
        let empty = Map::new();
        text(&self.publisher_id, &n.publisher_id)
            && text(&self.event_type, &n.event_type)
            && keys(&self.context, &n.ctxt)
            && self.metadata.iter().all(|(k, re)| metadata(k).is_some_and(|s| re.is_match(s)))
            && keys(&self.payload, n.payload.as_object().unwrap_or(&empty))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notify::{Metadata, Priority};

    fn n(publisher: &str, event: &str, payload: Value) -> Notification {
        Notification {
            priority: Priority::Info,
            publisher_id: publisher.into(),
            event_type: event.into(),
            payload,
            metadata: Metadata { message_id: "m1".into(), timestamp: "2026-12-07 08:00:00".into() },
            ctxt: json!({"project_id": "p1"}).as_object().cloned().unwrap(),
        }
    }

    #[test]
    fn every_rule_must_match_from_the_start() {
        let f = NotificationFilter::new().publisher_id("nova-compute").unwrap().event_type(r"task\.run").unwrap();
        assert!(f.matches(&n("nova-compute:h1", "task.run.end", json!({}))));
        assert!(!f.matches(&n("x-nova-compute:h1", "task.run.end", json!({}))), "re.match anchors at the start");
        assert!(!f.matches(&n("nova-compute:h1", "service.update", json!({}))));
        let f = NotificationFilter::new().payload("status", "^error$").unwrap().context("project_id", "p1").unwrap();
        assert!(f.matches(&n("p", "e", json!({"status": "error"}))));
        assert!(!f.matches(&n("p", "e", json!({"status": "errors"}))));
        assert!(!f.matches(&n("p", "e", json!({"status": 1}))), "not a string: no match");
        assert!(!f.matches(&n("p", "e", json!("flat"))));
        assert!(NotificationFilter::new().metadata("timestamp", "2026-12").unwrap().matches(&n("p", "e", json!(null))));
        assert!(NotificationFilter::new().event_type("(").is_err());
    }
}
