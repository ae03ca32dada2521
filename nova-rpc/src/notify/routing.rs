//! The `routing` driver's rules: which drivers a notification goes to, by
//! its event type and priority (oslo's `RoutingDriver`, whose YAML file
//! `[oslo_messaging_notifications] routing_config` names).
//!
//! ```yaml
//! group_1:
//!   messagingv2:
//!     accepted_priorities: ['info', 'error']
//!   log:
//!     accepted_events: ['task.run.*']
//! ```
//!
//! A driver is used when every rule it lists matches: one of its
//! `accepted_events` patterns matches the event type, and one of its
//! `accepted_priorities` the priority (shell patterns, as `fnmatch`).

use serde_json::Value;

use super::Priority;

/// One driver's rules within a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRule {
    /// The driver: `messagingv2`, `messaging`, `log` or `noop`.
    pub driver: String,
    /// Event type patterns; `None`: any.
    pub accepted_events: Option<Vec<String>>,
    /// Priority patterns (lower case); `None`: any.
    pub accepted_priorities: Option<Vec<String>>,
}

impl RoutingRule {
    fn accepts(&self, event_type: &str, priority: Priority) -> bool {
        let any = |patterns: &Option<Vec<String>>, text: &str| {
            patterns.as_ref().is_none_or(|ps| ps.iter().any(|p| fnmatch(text, &p.to_ascii_lowercase())))
        };
        let events = self.accepted_events.as_ref().is_none_or(|ps| ps.iter().any(|p| fnmatch(event_type, p)));
        events && any(&self.accepted_priorities, priority.routing_name())
    }
}

/// What in a routing file is not a group of drivers with lists of patterns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RoutingError(pub String);

/// The routing file, read: every group's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Each rule of every group.
    pub rules: Vec<RoutingRule>,
}

impl RoutingConfig {
    /// Read the routing file's content, parsed from YAML into JSON values:
    /// `{group: {driver: {accepted_events: [...], accepted_priorities: [...]}}}`.
    ///
    /// # Errors
    ///
    /// What in the file is not a group of drivers with lists of patterns.
    pub fn from_value(value: &Value) -> Result<Self, RoutingError> {
        let mut rules = Vec::new();
        let Some(groups) = value.as_object() else {
            return if value.is_null() {
                Ok(Self::default())
            } else {
                Err(RoutingError("expected a map of groups".into()))
            };
        };
        for (group, drivers) in groups {
            let drivers =
                drivers.as_object().ok_or_else(|| RoutingError(format!("group {group}: expected a map of drivers")))?;
            for (driver, checks) in drivers {
                if !matches!(driver.as_str(), "messagingv2" | "messaging" | "log" | "noop") {
                    return Err(RoutingError(format!("group {group}: unknown driver {driver:?}")));
                }
                let list = |key: &str| -> Result<Option<Vec<String>>, RoutingError> {
                    let bad = |what: &str| RoutingError(format!("{group}.{driver}.{key}: expected {what}"));
                    match checks.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::Array(items)) => items
                            .iter()
                            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| bad("strings")))
                            .collect::<Result<_, _>>()
                            .map(Some),
                        Some(_) => Err(bad("a list")),
                    }
                };
                rules.push(RoutingRule {
                    driver: driver.clone(),
                    accepted_events: list("accepted_events")?,
                    accepted_priorities: list("accepted_priorities")?,
                });
            }
        }
        Ok(Self { rules })
    }

    /// The drivers a notification goes to, each once, in the file's order.
    pub fn drivers_for(&self, event_type: &str, priority: Priority) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.accepts(event_type, priority)) {
            if !out.contains(&rule.driver.as_str()) {
                out.push(&rule.driver);
            }
        }
        out
    }
}

/// Whether `text` matches the shell pattern `pattern` (`*`, `?`, `[abc]`,
/// `[!abc]`, ranges), as Python's `fnmatch.fnmatchcase`.
///
/// ```
/// use nova_rpc::notify::fnmatch;
/// assert!(fnmatch("task.run.end", "task.run.*"));
/// assert!(fnmatch("info", "[ei]nfo") && !fnmatch("info", "[!i]nfo"));
/// assert!(!fnmatch("task.run", "task.run.?"));
/// ```
pub fn fnmatch(text: &str, pattern: &str) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    // Iterative matching with one backtrack point for the last `*`.
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => {
                ti += 1;
                pi += 1;
                continue;
            }
            Some('[') => {
                if let Some((matched, end)) = class(&p, pi, t[ti]) {
                    if matched {
                        ti += 1;
                        pi = end;
                        continue;
                    }
                } else if t[ti] == '[' {
                    ti += 1;
                    pi += 1;
                    continue;
                }
            }
            Some(&c) if c == t[ti] => {
                ti += 1;
                pi += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at `start`: whether `c` is in it, and where it ends;
/// `None` when it is not closed (then `[` is a plain character).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = matches!(p.get(i), Some('!'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&x) = p.get(i) {
        if x == ']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&y| y != ']') {
            matched |= (x..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= x == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_choose_drivers() {
        let config = RoutingConfig::from_value(&json!({
            "group_1": {"messagingv2": {"accepted_priorities": ["info", "error"]}},
            "group_2": {"log": {"accepted_events": ["task.run.*"]}, "messagingv2": {"accepted_events": ["service.*"]}},
        }))
        .unwrap();
        assert_eq!(config.drivers_for("task.run.end", Priority::Info), ["messagingv2", "log"]);
        assert_eq!(config.drivers_for("task.run.end", Priority::Debug), ["log"]);
        assert_eq!(config.drivers_for("service.update", Priority::Debug), ["messagingv2"]);
        assert!(config.drivers_for("other", Priority::Warn).is_empty());
    }

    #[test]
    fn bad_files_say_where() {
        let err = RoutingConfig::from_value(&json!({"g": {"kafka": {}}})).unwrap_err().to_string();
        assert!(err.contains("kafka"), "{err}");
        let err = RoutingConfig::from_value(&json!({"g": {"log": {"accepted_events": "x"}}})).unwrap_err().to_string();
        assert!(err.contains("g.log.accepted_events"), "{err}");
        assert_eq!(RoutingConfig::from_value(&Value::Null).unwrap(), RoutingConfig::default());
    }

    #[test]
    fn patterns_match_as_fnmatch() {
        assert!(fnmatch("", "*") && fnmatch("abc", "a*c") && fnmatch("abc", "*b*"));
        assert!(!fnmatch("abc", "a*d") && !fnmatch("ab", "abc"));
        assert!(fnmatch("a-c", "a[x-z-]c") || fnmatch("a-c", "a[-]c"));
        assert!(fnmatch("b", "[a-c]") && !fnmatch("d", "[a-c]"));
        assert!(fnmatch("[x", "[x"), "an unclosed class is a plain bracket");
    }
}
