//! Options declared once: an [`Opt<T>`] is an option's section, name,
//! default, help (what the sample and the reference show) and the parser
//! that turns its text into a `T` and checks it. [`Config::value`] reads
//! one; its default comes from the declaration, never from the reader.
//!
//! ```
//! use std::time::Duration;
//! use nova_core::config::{parse, Config, Opt};
//!
//! const TIMEOUT: Opt<Duration> = Opt::new("DEFAULT", "timeout", "30", "Seconds to wait.", parse::seconds);
//!
//! let config = Config::with_defaults(&[TIMEOUT.spec]);
//! assert_eq!(config.value(&TIMEOUT).unwrap(), Duration::from_secs(30));
//! ```

use super::{Config, ConfigError, OptSpec};

/// An option, declared once; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Opt<T> {
    /// Where it lives, its default, its help.
    pub spec: OptSpec,
    parse: fn(&str) -> Result<T, Invalid>,
}

/// What is wrong with an option's value, in a few words (the option, its
/// value and where it was set are added by [`Config::value`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<&str> for Invalid {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

impl From<String> for Invalid {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl<T> Opt<T> {
    /// `[section] name`, `default` as a file would say it (empty: unset),
    /// one line of `help`, and how its text is read and checked.
    pub const fn new(
        section: &'static str,
        name: &'static str,
        default: &'static str,
        help: &'static str,
        parse: fn(&str) -> Result<T, Invalid>,
    ) -> Self {
        Self { spec: OptSpec { section, name, default, help }, parse }
    }
}

impl Config {
    /// The value of `opt`: what the files, environment and flags say, or
    /// its declared default, read and checked by its parser. An error names
    /// the option, its value and where it was set.
    pub fn value<T>(&self, opt: &Opt<T>) -> Result<T, ConfigError> {
        let OptSpec { section, name, default, .. } = opt.spec;
        let text = self.raw(section, name).unwrap_or(default);
        (opt.parse)(text).map_err(|reason| self.invalid(section, name, reason.0))
    }
}

/// The parsers options are declared with: each takes the option's text
/// and says what is wrong in a few words.
pub mod parse {
    use std::{path::PathBuf, str::FromStr, time::Duration};

    use super::Invalid;

    /// Any text.
    pub fn text(v: &str) -> Result<String, Invalid> {
        Ok(v.to_owned())
    }

    /// Text, or `None` when empty.
    pub fn optional_text(v: &str) -> Result<Option<String>, Invalid> {
        Ok((!v.is_empty()).then(|| v.to_owned()))
    }

    /// A path.
    pub fn path(v: &str) -> Result<PathBuf, Invalid> {
        Ok(PathBuf::from(v))
    }

    /// A path, or `None` when empty.
    pub fn optional_path(v: &str) -> Result<Option<PathBuf>, Invalid> {
        Ok((!v.is_empty()).then(|| PathBuf::from(v)))
    }

    /// A boolean, as oslo.config reads one (`true/false/yes/no/on/off/1/0`).
    pub fn boolean(v: &str) -> Result<bool, Invalid> {
        match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("expected a boolean (true/false)".into()),
        }
    }

    /// A number (or anything else `FromStr` reads).
    pub fn number<T: FromStr>(v: &str) -> Result<T, Invalid>
    where
        T::Err: std::fmt::Display,
    {
        v.parse::<T>().map_err(|e| Invalid(e.to_string()))
    }

    /// A value `FromStr` reads, or `None` when empty.
    pub fn optional<T: FromStr>(v: &str) -> Result<Option<T>, Invalid>
    where
        T::Err: std::fmt::Display,
    {
        if v.is_empty() {
            return Ok(None);
        }
        number(v).map(Some)
    }

    /// Seconds (a number, fractions allowed) from 0 to 1e9.
    pub fn seconds(v: &str) -> Result<Duration, Invalid> {
        let f: f64 = v.parse().map_err(|_| Invalid::from("expected a number of seconds"))?;
        if !(0.0..=1e9).contains(&f) {
            return Err("must be between 0 and 1e9 seconds".into());
        }
        Ok(Duration::from_secs_f64(f))
    }

    /// A comma-separated list, blanks dropped.
    pub fn list(v: &str) -> Result<Vec<String>, Invalid> {
        Ok(v.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
    }

    /// A share from 0 to 1.
    pub fn ratio(v: &str) -> Result<f64, Invalid> {
        match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err("expected a number from 0 to 1".into()),
        }
    }
}
