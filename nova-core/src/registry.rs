//! Resolving `<topic>_manager`: names to manager factories.
//!
//! A binary for topic `compute` reads `[DEFAULT] compute_manager` (or
//! `--manager`), looks the name up here, and builds the manager from its
//! factory. An unknown name is an error that lists the known ones.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use nova_rpc::{dispatcher::BoxFuture, transport::Transport};

use crate::{
    config::{Config, CoreOptions, OptSpec},
    db::{Database, Migration},
    manager::{BoxError, ManagerHandle, ServiceInfo},
};

/// What a factory gets to build its manager with.
#[derive(Clone)]
pub struct ManagerDeps {
    /// Who the service is.
    pub service: ServiceInfo,
    /// The whole configuration (for the manager's own options).
    pub config: Arc<Config>,
    /// The framework's options.
    pub options: CoreOptions,
    /// The messaging transport (to build clients of other services).
    pub transport: Arc<dyn Transport>,
    /// The database (migrated with the manager's migrations).
    pub db: Database,
    /// Notifications, sent as `<binary>:<host>` (`nova-compute:host1`) in
    /// the formats the configuration asks for; sends nothing unless
    /// `[oslo_messaging_notifications] driver` is set.
    pub notifier: crate::notifications::Notifications,
}

impl std::fmt::Debug for ManagerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerDeps").field("service", &self.service).finish()
    }
}

type Factory = Arc<dyn Fn(ManagerDeps) -> BoxFuture<Result<ManagerHandle, BoxError>> + Send + Sync>;

/// A registered manager.
#[derive(Clone)]
pub struct ManagerEntry {
    /// The name users write in `<topic>_manager`.
    pub name: String,
    /// The manager's own options.
    pub options: &'static [OptSpec],
    /// The manager's own tables.
    pub migrations: &'static [Migration],
    /// Topics this manager is the default for.
    pub default_for: Vec<String>,
    /// Its binary's service version and history (none: version 1, one API).
    pub versions: Option<crate::upgrade::ServiceVersions>,
    factory: Factory,
}

impl std::fmt::Debug for ManagerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerEntry").field("name", &self.name).finish()
    }
}

impl ManagerEntry {
    /// A manager named `name`, built by `factory`.
    pub fn new<F, Fut>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(ManagerDeps) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ManagerHandle, BoxError>> + Send + 'static,
    {
        let name = name.into();
        let label = name.clone();
        Self {
            factory: Arc::new(move |deps| {
                let fut = factory(deps);
                let label = label.clone();
                Box::pin(async move { fut.await.map(|h| h.named(label)) })
            }),
            name,
            options: &[],
            migrations: &[],
            default_for: Vec::new(),
            versions: None,
        }
    }

    /// Declare its binary's service version and history (see
    /// [`upgrade`](crate::upgrade)): its records carry the version, and
    /// `[upgrade_levels] = auto` reads them.
    pub fn service_versions(mut self, versions: crate::upgrade::ServiceVersions) -> Self {
        self.versions = Some(versions);
        self
    }

    /// Declare the manager's options.
    pub fn options(mut self, options: &'static [OptSpec]) -> Self {
        self.options = options;
        self
    }

    /// Declare the manager's migrations.
    pub fn migrations(mut self, migrations: &'static [Migration]) -> Self {
        self.migrations = migrations;
        self
    }

    /// Make it the default `<topic>_manager`.
    pub fn default_for(mut self, topic: impl Into<String>) -> Self {
        self.default_for.push(topic.into());
        self
    }

    /// Build the manager.
    pub async fn build(&self, deps: ManagerDeps) -> Result<ManagerHandle, BoxError> {
        let mut handle = (self.factory)(deps).await?;
        if let Some(v) = self.versions {
            handle.service_version = v.current;
        }
        Ok(handle)
    }
}

/// `<topic>_manager` is not a known name.
#[derive(Debug, thiserror::Error)]
#[error("unknown manager {name:?}; known managers: {}", known.join(", "))]
pub struct UnknownManager {
    /// The name asked for.
    pub name: String,
    /// The names that exist.
    pub known: Vec<String>,
}

/// The known managers; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ManagerRegistry {
    entries: BTreeMap<String, ManagerEntry>,
}

impl ManagerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a manager.
    pub fn register(mut self, entry: ManagerEntry) -> Self {
        self.entries.insert(entry.name.clone(), entry);
        self
    }

    /// Merge another registry in.
    pub fn merge(mut self, other: ManagerRegistry) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// Look a manager up by name.
    pub fn resolve(&self, name: &str) -> Result<&ManagerEntry, UnknownManager> {
        self.entries
            .get(name)
            .ok_or_else(|| UnknownManager { name: name.to_owned(), known: self.entries.keys().cloned().collect() })
    }

    /// The default manager name for `topic`.
    pub fn default_for(&self, topic: &str) -> Option<&str> {
        self.entries.values().find(|e| e.default_for.iter().any(|t| t == topic)).map(|e| e.name.as_str())
    }

    /// Every registered entry.
    pub fn entries(&self) -> impl Iterator<Item = &ManagerEntry> {
        self.entries.values()
    }

    /// Every option the managers declare, plus `[DEFAULT] <topic>_manager` for their topics.
    pub fn option_specs(&self) -> Vec<OptSpec> {
        let mut out = Vec::new();
        for e in self.entries.values() {
            out.extend_from_slice(e.options);
            for topic in &e.default_for {
                let name: &'static str = Box::leak(format!("{topic}_manager").into_boxed_str());
                let default: &'static str = Box::leak(e.name.clone().into_boxed_str());
                out.push(OptSpec {
                    section: "DEFAULT",
                    name,
                    default,
                    help: "The manager class the service for this topic runs.",
                });
            }
        }
        out
    }
}
