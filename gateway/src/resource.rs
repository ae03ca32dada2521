//! What other crates add to the gateway: a [`Resource`] is routes, their
//! part of the OpenAPI document, and a link on the console. The tasks
//! resource (`/v1/tasks…`) comes this way from `nova_services::gateway`,
//! so the gateway itself knows no service.
//!
//! [`Routes`] remembers the path of every route it is given: the router and
//! the paths the OpenAPI document must describe come from one table.

use axum::{
    handler::Handler,
    http::Method,
    routing::{self, MethodRouter},
    Router,
};
use serde_json::{Map, Value};

use crate::Gateway;

/// The gateway's own OpenAPI document, before resources add theirs.
const OPENAPI: &str = include_str!("openapi.json");

/// The gateway's own document, parsed.
pub(crate) fn base_openapi() -> Value {
    // A test of this crate parses the same text; it is JSON.
    serde_json::from_str(OPENAPI).unwrap_or_default()
}

/// An axum router over the gateway's state that keeps a table of its
/// routes, `(METHOD, path)`: the router and the paths the OpenAPI document
/// must describe come from one place.
#[derive(Clone, Default)]
pub struct Routes {
    router: Router<Gateway>,
    table: Vec<(Method, &'static str)>,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `GET path` with `handler`.
    pub fn get<H: Handler<T, Gateway>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.route(Method::GET, path, routing::get(handler))
    }

    /// Serve `POST path` with `handler`.
    pub fn post<H: Handler<T, Gateway>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.route(Method::POST, path, routing::post(handler))
    }

    /// Serve `DELETE path` with `handler`.
    pub fn delete<H: Handler<T, Gateway>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.route(Method::DELETE, path, routing::delete(handler))
    }

    fn route(mut self, method: Method, path: &'static str, handler: MethodRouter<Gateway>) -> Self {
        self.router = self.router.route(path, handler);
        self.table.push((method, path));
        self
    }

    /// Give every route so far `value` as an [`axum::Extension`] (a
    /// resource's own state beside the gateway's).
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.router = self.router.layer(axum::Extension(value));
        self
    }

    /// Both tables in one.
    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// Every route, `(METHOD, path)`, in the order they were given.
    pub fn table(&self) -> &[(Method, &'static str)] {
        &self.table
    }

    pub(crate) fn into_router(self) -> Router<Gateway> {
        self.router
    }
}

/// Routes a crate adds to the gateway, behind its auth, policy and limits.
#[derive(Clone)]
pub struct Resource {
    routes: Routes,
    openapi: Map<String, Value>,
    link: Option<(&'static str, &'static str)>,
}

impl Resource {
    /// A resource serving `routes`.
    pub fn new(routes: Routes) -> Self {
        Self { routes, openapi: Map::new(), link: None }
    }

    /// Its part of the OpenAPI document: an object with `paths` and,
    /// optionally, `components.schemas`, merged into the gateway's.
    pub fn with_openapi(mut self, document: Value) -> Self {
        if let Value::Object(document) = document {
            self.openapi = document;
        }
        self
    }

    /// A link on the console's front page to the resource's own page.
    pub fn with_console_link(mut self, path: &'static str, label: &'static str) -> Self {
        self.link = Some((path, label));
        self
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    pub(crate) fn link(&self) -> Option<(&'static str, &'static str)> {
        self.link
    }

    pub(crate) fn into_routes(self) -> Routes {
        self.routes
    }

    /// Merge this resource's paths and schemas into `document`.
    pub(crate) fn describe_into(&self, document: &mut Value) {
        for (section, within) in [("paths", None), ("components", Some("schemas"))] {
            let mine = match within {
                None => self.openapi.get(section),
                Some(key) => self.openapi.get(section).and_then(|c| c.get(key)),
            };
            let Some(Value::Object(mine)) = mine else { continue };
            let theirs = match within {
                None => &mut document[section],
                Some(key) => &mut document[section][key],
            };
            if let Value::Object(theirs) = theirs {
                theirs.extend(mine.clone());
            } else {
                *theirs = Value::Object(mine.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_json() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    }

    #[test]
    fn a_resource_adds_paths_and_schemas() {
        let mut doc = base_openapi();
        let own = doc["paths"].as_object().map_or(0, Map::len);
        let extra = serde_json::json!({
            "paths": {"/v1/things": {"get": {}}},
            "components": {"schemas": {"Thing": {"type": "object"}}}
        });
        Resource::new(Routes::new()).with_openapi(extra).describe_into(&mut doc);
        assert_eq!(doc["paths"].as_object().map_or(0, Map::len), own + 1);
        assert!(doc["components"]["schemas"]["Thing"].is_object());
        assert!(doc["components"]["schemas"]["Error"].is_object(), "the gateway's own schemas stay");
    }
}
