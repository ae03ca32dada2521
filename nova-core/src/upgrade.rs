//! Rolling upgrades: what a binary's service version serves, and the pin
//! a topic's clients send under, as Nova has them.
//!
//! Each binary declares a monotonic service version and its history: the
//! API version each service version serves ([`ServiceVersions`], Nova's
//! `SERVICE_VERSION` and `SERVICE_VERSION_HISTORY`). Its service record
//! carries it (`version`; 0, from before versions were written, is the
//! oldest API).
//!
//! `[upgrade_levels] <topic>` pins the clients of a topic:
//! - empty: no pin (every method goes at its own version);
//! - `X.Y`: never above it;
//! - a release name from the API's map (`epoxy = 1.0`, …);
//! - `auto`: the API version of the oldest live record of the topic's
//!   binary. It is computed at start, logged once, kept, and computed
//!   again on SIGHUP, as Nova does: a pin that moved by itself in the
//!   middle of a request stream would make a fleet's behaviour change at
//!   an instant nobody chose, and reading every record before every call
//!   would put the database on the call path.

use std::time::Duration;

use nova_rpc::Version;

use crate::{
    config::{Config, ConfigError},
    db::{
        services::{is_up, ServiceRecords},
        DbError,
    },
};

/// A binary's service version, and what each service version serves.
#[derive(Debug, Clone, Copy)]
pub struct ServiceVersions {
    /// This code's service version.
    pub current: i64,
    /// `(service version, API version it serves)`, oldest first; the first
    /// entry also covers every older record (version 0).
    pub history: &'static [(i64, &'static str)],
    /// Release names an operator may pin to: `(name, API version)`.
    pub releases: &'static [(&'static str, &'static str)],
}

impl ServiceVersions {
    /// The API version a host at `service_version` serves.
    pub fn api_of(&self, service_version: i64) -> Option<Version> {
        let served = self.history.iter().rev().find(|(v, _)| *v <= service_version).or(self.history.first());
        served.and_then(|(_, api)| api.parse().ok())
    }
}

/// Why a pin could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// `[upgrade_levels] <topic>` is not a version, a release or `auto`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The service records could not be read for `auto`.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The pin for `topic`'s clients from `[upgrade_levels] <topic>`
/// (`None`: not pinned); `auto` reads the live records of `nova-<topic>`
/// (a record not seen within `down_after` is not live).
pub async fn pin(
    config: &Config,
    topic: &str,
    versions: &ServiceVersions,
    records: &ServiceRecords,
    down_after: Duration,
) -> Result<Option<Version>, UpgradeError> {
    let level = config.raw("upgrade_levels", topic).unwrap_or("").trim();
    if level.is_empty() {
        return Ok(None);
    }
    if level != "auto" {
        let named = versions.releases.iter().find(|(name, _)| *name == level).map(|(_, v)| *v);
        let version = named.unwrap_or(level).parse::<Version>().map_err(|_| {
            let names: Vec<&str> = versions.releases.iter().map(|(n, _)| *n).collect();
            let releases = if names.is_empty() { String::new() } else { format!(", a release ({})", names.join(", ")) };
            config.invalid("upgrade_levels", topic, format!("expected a version (X.Y){releases} or auto"))
        })?;
        tracing::info!(topic, pin = %version, "pinning {topic} to {version} ([upgrade_levels] {topic} = {level})");
        return Ok(Some(version));
    }
    let binary = format!("nova-{topic}");
    let now = chrono::Utc::now().naive_utc();
    let live: Vec<i64> = records
        .list(Some(topic))
        .await?
        .into_iter()
        .filter(|r| r.binary == binary && r.deleted == 0 && is_up(r, down_after, now))
        .map(|r| r.version)
        .collect();
    let Some(oldest) = live.iter().copied().min() else {
        tracing::info!(topic, "not pinning {topic}: no {binary} is up ([upgrade_levels] {topic} = auto)");
        return Ok(None);
    };
    let at_oldest = live.iter().filter(|v| **v == oldest).count();
    let version = versions.api_of(oldest);
    if version.is_some() && version == versions.api_of(versions.current) {
        tracing::info!(topic, "not pinning {topic}: every live {binary} ({}) serves this code's API", live.len());
        return Ok(None);
    }
    if let Some(v) = version {
        tracing::info!(
            topic, pin = %v, hosts = at_oldest, service_version = oldest,
            "pinning {topic} to {v} because of {at_oldest} host(s) at service version {oldest}"
        );
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSIONS: ServiceVersions =
        ServiceVersions { current: 2, history: &[(0, "1.0"), (2, "1.1")], releases: &[("epoxy", "1.0")] };

    #[test]
    fn a_service_version_serves_the_api_of_its_history() {
        assert_eq!(VERSIONS.api_of(0), Some(Version::new(1, 0)));
        assert_eq!(VERSIONS.api_of(1), Some(Version::new(1, 0)));
        assert_eq!(VERSIONS.api_of(2), Some(Version::new(1, 1)));
        assert_eq!(VERSIONS.api_of(7), Some(Version::new(1, 1)), "a newer host serves at least this code's API");
    }
}
