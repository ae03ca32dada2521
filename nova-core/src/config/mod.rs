//! Configuration: built-in defaults < `--config-file`s and `--config-dir`
//! < environment (`NOVA_…`) < command-line flags, layered by the `config`
//! crate.
//!
//! Files are INI like `nova.conf`, read by oslo.config's rules ([`ini`]),
//! with OpenStack's option names (`[DEFAULT] transport_url`, `[database]
//! connection`, `[oslo_messaging_rabbit] …`); `.toml`, `.yaml`/`.yml` and
//! `.json` files work too, chosen by extension, with sections as tables.
//! Every value keeps its origin, so a bad value is reported as "option X
//! in file:line: why", and options nobody declared are warned about. Managers declare their own options (for
//! example `[compute] allowed_commands`) as [`OptSpec`]s next to their
//! factory in the registry.
//!
//! Environment variables: `NOVA_<KEY>` for `[DEFAULT]` options,
//! `NOVA_<SECTION>__<KEY>` for the others (`NOVA_DATABASE__CONNECTION`).

mod flags;
pub mod ini;
pub mod options;
mod typed;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

pub use self::{
    flags::CommonArgs,
    options::{CoreOptions, CORE_OPTIONS},
    typed::{parse, Invalid, Opt},
};

/// A declared option: its section, name, default (as text) and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptSpec {
    /// `DEFAULT`, `database`, `oslo_messaging_rabbit`, …
    pub section: &'static str,
    /// The option name.
    pub name: &'static str,
    /// The default, as it would be written in a file (empty: unset).
    pub default: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A config file, with its line.
    File(PathBuf, usize),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
    /// Set at run time by code.
    Code,
}

impl Origin {
    /// As the `config` crate carries it (a value's origin is a string).
    pub fn encode(&self) -> String {
        match self {
            Origin::Default => "default".into(),
            Origin::File(p, line) => format!("file\u{1f}{line}\u{1f}{}", p.display()),
            Origin::Env(v) => format!("env\u{1f}{v}"),
            Origin::Flag(f) => format!("flag\u{1f}{f}"),
            Origin::Code => "code".into(),
        }
    }

    /// Back from [`Origin::encode`]; a bare path (what the `config` crate
    /// records for TOML, YAML and JSON files) is that file, no line.
    pub fn decode(text: Option<&str>) -> Self {
        let Some(text) = text else { return Origin::Code };
        let mut parts = text.split('\u{1f}');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("default"), None, None) => Origin::Default,
            (Some("code"), None, None) => Origin::Code,
            (Some("file"), Some(line), Some(path)) => Origin::File(path.into(), line.parse().unwrap_or(0)),
            (Some("env"), Some(v), None) => Origin::Env(v.to_owned()),
            (Some("flag"), Some(f), None) => Origin::Flag(f.to_owned()),
            _ => Origin::File(text.into(), 0),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the built-in default"),
            Origin::File(p, 0) => write!(f, "{}", p.display()),
            Origin::File(p, line) => write!(f, "{}:{line}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Code => write!(f, "code"),
        }
    }
}

/// A configuration problem, naming the option and where it was set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("cannot read config file {}: {reason}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file is not valid INI.
    #[error("{}:{line}: {reason}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A value does not parse as its option's type.
    #[error("invalid value {value:?} for option [{section}] {name} (from {origin}): {reason}")]
    BadValue {
        /// Section.
        section: String,
        /// Option name.
        name: String,
        /// The offending value (passwords masked).
        value: String,
        /// Where it was set.
        origin: Origin,
        /// What is wrong.
        reason: String,
    },
    /// A required option is not set.
    #[error("option [{section}] {name} is required")]
    Missing {
        /// Section.
        section: String,
        /// Option name.
        name: String,
    },
}

#[derive(Debug, Clone)]
struct Setting {
    value: String,
    origin: Origin,
}

/// The merged configuration; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<(String, String), Setting>,
    specs: Vec<OptSpec>,
    files: Vec<PathBuf>,
}

fn key(section: &str, name: &str) -> (String, String) {
    (section.to_owned(), name.to_owned())
}

/// The environment variable for an option.
pub fn env_var(section: &str, name: &str) -> String {
    if section == "DEFAULT" {
        format!("NOVA_{}", name.to_ascii_uppercase())
    } else {
        format!("NOVA_{}__{}", section.to_ascii_uppercase(), name.to_ascii_uppercase())
    }
}

impl Config {
    /// Only the defaults of `specs`.
    pub fn with_defaults(specs: &[OptSpec]) -> Self {
        let mut c = Self::default();
        c.declare(specs);
        c
    }

    /// Declare more options (their defaults apply where nothing is set).
    pub fn declare(&mut self, specs: &[OptSpec]) {
        for s in specs {
            if !self.specs.iter().any(|k| k.section == s.section && k.name == s.name) {
                self.specs.push(*s);
            }
            if !s.default.is_empty() {
                self.values
                    .entry(key(s.section, s.name))
                    .or_insert(Setting { value: s.default.to_owned(), origin: Origin::Default });
            }
        }
    }

    /// The declared options.
    pub fn specs(&self) -> &[OptSpec] {
        &self.specs
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Load every layer: `files` (then `*.conf` in `dir`, sorted), the
    /// environment, and `flags` as `(section, name, value, flag)`; the
    /// `config` crate layers them over the declared defaults.
    pub fn load(
        specs: &[OptSpec],
        files: &[PathBuf],
        dir: Option<&Path>,
        flags: &[(&str, &str, String, &str)],
    ) -> Result<Self, ConfigError> {
        let mut all = files.to_vec();
        if let Some(dir) = dir {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ConfigError::Unreadable { file: dir.to_owned(), reason: e.to_string() })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            in_dir.sort();
            all.extend(in_dir);
        }
        let mut builder = config::Config::builder().add_source(Layer::defaults(specs));
        for file in &all {
            builder = builder.add_source(Layer::file(file)?);
        }
        builder = builder.add_source(Layer::env(specs));
        let flags = flags
            .iter()
            .map(|(s, n, v, f)| ((*s).to_owned(), (*n).to_owned(), v.clone(), Origin::Flag((*f).to_owned())));
        builder = builder.add_source(Layer { values: flags.collect() });
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Unreadable { file: PathBuf::from("(layers)"), reason: e.to_string() })?;
        let mut c = Self { specs: Vec::new(), values: BTreeMap::new(), files: all };
        c.declare(specs);
        let table = config::Source::collect(&merged)
            .map_err(|e| ConfigError::Unreadable { file: PathBuf::from("(layers)"), reason: e.to_string() })?;
        for (section, options) in table {
            let config::ValueKind::Table(options) = options.kind else { continue };
            for (name, value) in options {
                let origin = Origin::decode(value.origin());
                c.set(&section, &name, text_of(value), origin);
            }
        }
        Ok(c)
    }

    /// Read one file on top of what is there.
    pub fn read_file(&mut self, file: &Path) -> Result<(), ConfigError> {
        for (section, name, value, origin) in Layer::file(file)?.values {
            self.set(&section, &name, value, origin);
        }
        self.files.push(file.to_owned());
        Ok(())
    }

    /// Set a value.
    pub fn set(&mut self, section: &str, name: &str, value: String, origin: Origin) {
        self.values.insert(key(section, name), Setting { value, origin });
    }

    /// Options set in files or the environment that nobody declared, in
    /// `[DEFAULT]` or a section this program has options in.
    pub fn unknown(&self) -> Vec<String> {
        // A section no option of this program lives in belongs to another
        // program sharing the file (the gateway's [api], say): not ours to judge.
        let ours = |s: &str| s == "DEFAULT" || self.specs.iter().any(|k| k.section == s);
        self.values
            .iter()
            .filter(|((s, n), _)| ours(s) && !self.specs.iter().any(|k| k.section == s && k.name == n))
            .map(|((s, n), v)| format!("[{s}] {n} (from {})", v.origin))
            .collect()
    }

    /// The raw text of an option, if set.
    pub fn raw(&self, section: &str, name: &str) -> Option<&str> {
        self.values.get(&key(section, name)).map(|s| s.value.as_str())
    }

    /// Where an option's value came from.
    pub fn origin(&self, section: &str, name: &str) -> Option<&Origin> {
        self.values.get(&key(section, name)).map(|s| &s.origin)
    }

    /// An error blaming option `[section] name`, with its value and origin, for `reason`.
    pub fn invalid(&self, section: &str, name: &str, reason: impl Into<String>) -> ConfigError {
        let (value, origin) = match self.values.get(&key(section, name)) {
            Some(s) => (nova_rpc::transport::TransportUrl::mask(&s.value), s.origin.clone()),
            None => (String::new(), Origin::Default),
        };
        ConfigError::BadValue {
            section: section.to_owned(),
            name: name.to_owned(),
            value,
            origin,
            reason: reason.into(),
        }
    }

    /// Parse an option with `parse`, naming the option and its origin on error.
    pub fn parse_with<T>(
        &self,
        section: &str,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(s) = self.values.get(&key(section, name)) else { return Ok(None) };
        if s.value.is_empty() {
            return Ok(None);
        }
        parse(&s.value).map(Some).map_err(|reason| ConfigError::BadValue {
            section: section.to_owned(),
            name: name.to_owned(),
            value: nova_rpc::transport::TransportUrl::mask(&s.value),
            origin: s.origin.clone(),
            reason,
        })
    }

    /// Parse an option as `T`.
    pub fn get<T: FromStr>(&self, section: &str, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse_with(section, name, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    /// Parse a required option as `T`.
    pub fn require<T: FromStr>(&self, section: &str, name: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(section, name)?.ok_or_else(|| ConfigError::Missing { section: section.into(), name: name.into() })
    }

    /// Parse a boolean the way oslo.config does (`true/false/yes/no/on/off/1/0`).
    pub fn get_bool(&self, section: &str, name: &str) -> Result<Option<bool>, ConfigError> {
        self.parse_with(section, name, |v| match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("expected a boolean (true/false)".into()),
        })
    }

    /// Parse a `key = value` list (one per line, or comma separated; oslo's `DictOpt`).
    pub fn get_dict(&self, section: &str, name: &str) -> Result<Option<Vec<(String, String)>>, ConfigError> {
        self.parse_with(section, name, |v| {
            v.split(['\n', ','])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) =
                        l.split_once(['=', ':']).ok_or_else(|| format!("expected key = value, found {l:?}"))?;
                    Ok((k.trim().to_owned(), v.trim().to_owned()))
                })
                .collect()
        })
    }

    /// Render a sample config file documenting every declared option.
    pub fn sample(specs: &[OptSpec]) -> String {
        let mut out = String::from("# nova-rs sample configuration: every option with its default.\n");
        for section in sections(specs) {
            out.push_str(&format!("\n[{section}]\n"));
            for s in specs.iter().filter(|s| s.section == section) {
                out.push_str(&format!(
                    "\n# {}\n# (env: {})\n#{} = {}\n",
                    s.help,
                    env_var(s.section, s.name),
                    s.name,
                    s.default
                ));
            }
        }
        out
    }

    /// A Markdown reference of `specs`: a table per section with each
    /// option's default, environment variable and help (`docs/configuration.md`).
    pub fn reference(specs: &[OptSpec]) -> String {
        let mut out = String::from(
            "# Configuration reference\n\nEvery option, by section, with its default and the environment \
             variable that sets it. Values are layered: defaults < `--config-file` / `--config-dir` < `NOVA_…` \
             environment < flags. Generated by `nova-manage config reference`; `etc/nova/nova.conf.sample` has \
             the same in INI form.\n",
        );
        for section in sections(specs) {
            out.push_str(&format!(
                "\n## [{section}]\n\n| option | default | environment | what it does |\n| --- | --- | --- | --- |\n"
            ));
            for s in specs.iter().filter(|s| s.section == section) {
                let default = if s.default.is_empty() { "(unset)".to_owned() } else { format!("`{}`", s.default) };
                let help = s.help.replace('|', "\\|");
                out.push_str(&format!("| `{}` | {default} | `{}` | {help} |\n", s.name, env_var(s.section, s.name)));
            }
        }
        out
    }
}

/// A value as text: strings as they are, numbers and booleans written out,
/// a list one item per line, a table `key = value` per line (how oslo's
/// list and dict options read them).
fn text_of(value: config::Value) -> String {
    use config::ValueKind;
    match value.kind {
        ValueKind::Nil => String::new(),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(x) => x.to_string(),
        ValueKind::String(s) => s,
        ValueKind::Array(items) => items.into_iter().map(text_of).collect::<Vec<_>>().join("\n"),
        ValueKind::Table(t) => {
            t.into_iter().map(|(k, v)| format!("{k} = {}", text_of(v))).collect::<Vec<_>>().join("\n")
        }
    }
}

/// One layer for the `config` crate: `(section, name, value, origin)`s.
#[derive(Debug, Clone, Default)]
struct Layer {
    values: Vec<(String, String, String, Origin)>,
}

impl Layer {
    fn defaults(specs: &[OptSpec]) -> Self {
        let values = specs
            .iter()
            .filter(|s| !s.default.is_empty())
            .map(|s| (s.section.to_owned(), s.name.to_owned(), s.default.to_owned(), Origin::Default))
            .collect();
        Self { values }
    }

    fn env(specs: &[OptSpec]) -> Self {
        let values = specs
            .iter()
            .filter_map(|s| {
                let var = env_var(s.section, s.name);
                let value = std::env::var(&var).ok()?;
                Some((s.section.to_owned(), s.name.to_owned(), value, Origin::Env(var)))
            })
            .collect();
        Self { values }
    }

    /// A file, by its extension: `.toml`, `.yaml`/`.yml`, `.json`, else oslo INI.
    fn file(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::Unreadable { file: file.to_owned(), reason: e.to_string() })?;
        let uri = file.display().to_string();
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let format = match ext.as_str() {
            "toml" => Some(config::FileFormat::Toml),
            "yaml" | "yml" => Some(config::FileFormat::Yaml),
            "json" => Some(config::FileFormat::Json),
            _ => None,
        };
        let parsed = match format {
            Some(f) => config::Format::parse(&f, Some(&uri), &text),
            None => config::Format::parse(&ini::OsloIni, Some(&uri), &text),
        };
        let table = parsed.map_err(|e| match e.downcast::<ConfigError>() {
            Ok(e) => *e,
            Err(e) => ConfigError::Syntax { file: file.to_owned(), line: 0, reason: e.to_string() },
        })?;
        let mut values = Vec::new();
        for (section, options) in table {
            let config::ValueKind::Table(options) = options.kind else {
                return Err(ConfigError::Syntax {
                    file: file.to_owned(),
                    line: 0,
                    reason: format!("{section:?} is not a section: options go in tables such as [DEFAULT]"),
                });
            };
            let section = ini::normalize_section(&section);
            for (name, value) in options {
                let origin = match value.origin() {
                    Some(o) if o.contains('\u{1f}') => Origin::decode(Some(o)),
                    _ => Origin::File(file.to_owned(), 0),
                };
                values.push((section.clone(), name.replace('-', "_"), text_of(value), origin));
            }
        }
        Ok(Self { values })
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut sections: config::Map<String, config::Map<String, config::Value>> = config::Map::new();
        for (section, name, value, origin) in &self.values {
            let v = config::Value::new(Some(&origin.encode()), config::ValueKind::String(value.clone()));
            sections.entry(section.clone()).or_default().insert(name.clone(), v);
        }
        Ok(sections.into_iter().map(|(s, t)| (s, config::Value::new(None, config::ValueKind::Table(t)))).collect())
    }
}

/// The sections of `specs`, in order of first appearance.
fn sections(specs: &[OptSpec]) -> Vec<&'static str> {
    let mut sections: Vec<&'static str> = Vec::new();
    for s in specs {
        if !sections.contains(&s.section) {
            sections.push(s.section);
        }
    }
    sections
}
