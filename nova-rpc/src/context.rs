//! The request context: who is calling, and which request this is.
//!
//! A [`RequestContext`] travels with every call and cast as the `_context_*`
//! keys of the oslo message, exactly as `oslo.context` puts them there. Keys
//! this type does not know are kept in [`RequestContext::extra`] and sent on
//! unchanged, so a context passes through a Python hop without losing
//! anything (the trace layer relies on that).

use serde_json::{Map, Value};

/// The caller's identity and the request id, carried as `_context_*` keys.
///
/// ```
/// use nova_rpc::RequestContext;
/// let ctx = RequestContext::new().with_user("u1", "p1");
/// assert!(ctx.request_id.starts_with("req-"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestContext {
    /// `req-<uuid>`; generated when absent.
    pub request_id: String,
    /// The calling user.
    pub user_id: Option<String>,
    /// The calling project (tenant).
    pub project_id: Option<String>,
    /// Roles the caller holds.
    pub roles: Vec<String>,
    /// Request id of the request that started the chain, across services.
    pub global_request_id: Option<String>,
    /// Every other context key, passed on untouched.
    pub extra: Map<String, Value>,
    /// On a server: the id of the signing key that verified this request
    /// ([`crate::signing`]); never sent on.
    pub signed_by: Option<String>,
}

/// A freshly generated OpenStack style request id: `req-<uuid4>`.
pub fn generate_request_id() -> String {
    format!("req-{}", crate::id::random_uuid())
}

impl RequestContext {
    /// An anonymous context with a new request id.
    pub fn new() -> Self {
        Self { request_id: generate_request_id(), ..Self::default() }
    }

    /// Set user and project.
    pub fn with_user(mut self, user_id: impl Into<String>, project_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self.project_id = Some(project_id.into());
        self
    }

    /// Add roles.
    pub fn with_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// Set an extra key, sent as `_context_<key>`.
    pub fn with_extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Build from a context dictionary (the `_context_` prefix already removed).
    /// A missing `request_id` is generated; unknown keys go to `extra`.
    pub fn from_map(map: Map<String, Value>) -> Self {
        let mut fields = ContextFields::default();
        for (k, v) in map {
            fields.accept(&k, v);
        }
        fields.build()
    }

    /// Visit every context entry as `(key, value)`: `user_id`, `project_id`,
    /// `request_id`, `global_request_id`, `roles`, then the extra keys in
    /// their order. Unset optional keys are skipped. The values are
    /// borrowed: the wire encoder writes them from here without copying.
    pub fn for_each_entry(&self, mut f: impl FnMut(&str, Entry<'_>)) {
        if let Some(u) = &self.user_id {
            f("user_id", Entry::Text(u));
        }
        if let Some(p) = &self.project_id {
            f("project_id", Entry::Text(p));
        }
        f("request_id", Entry::Text(&self.request_id));
        if let Some(g) = &self.global_request_id {
            f("global_request_id", Entry::Text(g));
        }
        if !self.roles.is_empty() {
            f("roles", Entry::Texts(&self.roles));
        }
        for (k, v) in &self.extra {
            f(k, Entry::Json(v));
        }
    }

    /// The context as a dictionary, as an oslo endpoint would see it.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        self.for_each_entry(|k, v| {
            map.insert(k.to_owned(), v.to_value());
        });
        map
    }
}

/// One context entry's value, borrowed from the [`RequestContext`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Entry<'a> {
    /// A string field.
    Text(&'a str),
    /// A list of strings (`roles`).
    Texts(&'a [String]),
    /// An extra key's value.
    Json(&'a Value),
}

impl Entry<'_> {
    /// The value as JSON.
    pub fn to_value(self) -> Value {
        match self {
            Entry::Text(s) => Value::from(s),
            Entry::Texts(items) => Value::from(items.to_vec()),
            Entry::Json(v) => v.clone(),
        }
    }
}

impl serde::Serialize for Entry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Entry::Text(t) => t.serialize(s),
            Entry::Texts(items) => items.serialize(s),
            Entry::Json(v) => v.serialize(s),
        }
    }
}

/// A context read key by key (from a message, or a dictionary): the keys
/// this type knows, and the others kept in order for `extra`.
#[derive(Debug, Default)]
pub(crate) struct ContextFields {
    request_id: Option<String>,
    user_id: Option<String>,
    project_id: Option<String>,
    global_request_id: Option<String>,
    roles: Vec<String>,
    extra: Map<String, Value>,
}

impl ContextFields {
    /// Take one entry (the `_context_` prefix already removed); a later
    /// entry of the same key replaces an earlier one.
    pub(crate) fn accept(&mut self, key: &str, value: Value) {
        fn text(v: Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        }
        match key {
            "request_id" => self.request_id = text(value),
            "user_id" => self.user_id = text(value),
            "project_id" => self.project_id = text(value),
            "global_request_id" => self.global_request_id = text(value),
            "roles" => {
                self.roles = match value {
                    Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                    Value::String(s) => s.split(',').map(|r| r.trim().to_owned()).collect(),
                    _ => Vec::new(),
                }
            }
            _ => {
                self.extra.insert(key.to_owned(), value);
            }
        }
    }

    /// The context; a missing `request_id` is generated.
    pub(crate) fn build(self) -> RequestContext {
        RequestContext {
            request_id: self.request_id.unwrap_or_else(generate_request_id),
            user_id: self.user_id,
            project_id: self.project_id,
            roles: self.roles,
            global_request_id: self.global_request_id,
            extra: self.extra,
            signed_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_req_and_a_new_uuid4() {
        let (a, b) = (super::generate_request_id(), super::generate_request_id());
        assert_ne!(a, b);
        let uuid = uuid::Uuid::parse_str(a.strip_prefix("req-").expect("the req- prefix")).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(a, format!("req-{uuid}"), "lower-case and hyphenated, as oslo.context writes it");
    }
}
