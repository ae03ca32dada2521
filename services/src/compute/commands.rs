//! The allow-list of commands tasks may run (`[compute] allowed_commands`).
//!
//! Each entry is `name = argv`. A name may carry a version, `transcode@2`:
//! a task asking for `transcode@1` gets that version, and a bare
//! `transcode` gets the highest one. The list is reloaded on SIGHUP; a
//! running task keeps the argv it started with.
//!
//! What a caller may append to a command's argv is the command's argument
//! rule (`[compute] command_args`, entries `name: rule` separated by `;`),
//! as oslo.rootwrap's filters decide per command:
//!
//! * `any`: any arguments (the rule of a command no entry names);
//! * `none`: no arguments at all;
//! * `regex PATTERN`: each argument must match PATTERN whole;
//! * a leading `--` puts `--` between the command's own argv and the
//!   caller's arguments, so none of them is read as an option.
//!
//! ```text
//! command_args = cat: none; transcode: -- regex [A-Za-z0-9_./-]+; echo: any
//! ```

use std::collections::BTreeMap;

/// What a caller may append to a command; see the module docs.
#[derive(Debug, Clone, Default)]
pub enum ArgRule {
    /// Anything.
    #[default]
    Any,
    /// Nothing.
    None,
    /// Each argument matches this, whole.
    Matching(regex::Regex),
}

impl PartialEq for ArgRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ArgRule::Any, ArgRule::Any) | (ArgRule::None, ArgRule::None) => true,
            (ArgRule::Matching(a), ArgRule::Matching(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for ArgRule {}

/// A command's argument rule, and whether `--` goes before the arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    args: ArgRule,
    separator: bool,
}

/// Why `[compute] allowed_commands` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    /// An entry with no program.
    #[error("[compute] allowed_commands: {0} has an empty command")]
    EmptyCommand(String),
    /// An entry with no name before its `@version`.
    #[error("[compute] allowed_commands: {0:?} has no name")]
    NoName(String),
    /// An entry whose version is not a positive whole number.
    #[error("[compute] allowed_commands: {entry}: {why}")]
    BadVersion {
        /// The entry.
        entry: String,
        /// What is wrong.
        why: String,
    },
}

/// Why `[compute] command_args` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgRulesError {
    /// An entry is not `name: rule`.
    #[error("[compute] command_args: {0:?} is not name: rule")]
    NotAnEntry(String),
    /// A rule names a command the allow-list does not have.
    #[error("[compute] command_args: {0} is not in allowed_commands")]
    UnknownCommand(String),
    /// A rule does not parse.
    #[error("[compute] command_args: {command}: {why}")]
    BadRule {
        /// The command.
        command: String,
        /// What is wrong with its rule.
        why: String,
    },
}

impl Rule {
    /// Parse `[--] none | any | regex PATTERN`; `Err` says what is wrong.
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (separator, rest) = match text.strip_prefix("--") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, text),
        };
        let args = match rest.split_once(char::is_whitespace).map_or((rest, ""), |(a, b)| (a, b.trim())) {
            ("any", "") => ArgRule::Any,
            ("none", "") => ArgRule::None,
            ("regex", pattern) if !pattern.is_empty() => ArgRule::Matching(
                regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("bad pattern {pattern:?}: {e}"))?,
            ),
            _ => return Err(format!("{text:?} is not [--] none, any or regex PATTERN")),
        };
        Ok(Self { args, separator })
    }

    /// Check `args` against the rule; why not, naming the argument.
    fn check(&self, args: &[String]) -> Result<(), String> {
        match &self.args {
            ArgRule::Any => Ok(()),
            ArgRule::None if args.is_empty() => Ok(()),
            ArgRule::None => Err("takes no arguments".into()),
            ArgRule::Matching(re) => match args.iter().position(|a| !re.is_match(a)) {
                None => Ok(()),
                Some(i) => Err(format!("argument {} does not match {}", i + 1, re.as_str())),
            },
        }
    }
}

/// A parsed allow-list; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    /// `name` → version (0 when unversioned) → argv.
    by_name: BTreeMap<String, BTreeMap<u32, Vec<String>>>,
    /// `name` → its argument rule (the same for every version).
    rules: BTreeMap<String, Rule>,
}

impl Commands {
    /// Parse `name = argv` pairs; an empty argv or a bad version is an error
    /// that names the entry.
    pub fn parse(entries: Vec<(String, String)>) -> Result<Self, AllowListError> {
        let mut by_name: BTreeMap<String, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for (entry, argv) in entries {
            let argv: Vec<String> = argv.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(AllowListError::EmptyCommand(entry));
            }
            let (name, version) =
                split(&entry).map_err(|why| AllowListError::BadVersion { entry: entry.clone(), why })?;
            if name.is_empty() {
                return Err(AllowListError::NoName(entry));
            }
            by_name.entry(name.to_owned()).or_default().insert(version.unwrap_or(0), argv);
        }
        Ok(Self { by_name, rules: BTreeMap::new() })
    }

    /// The same list with argument rules (`[compute] command_args`: `name:
    /// rule` entries separated by `;`); a rule for a command not in the
    /// list, or one that does not parse, is an error naming it.
    pub fn with_arg_rules(mut self, spec: &str) -> Result<Self, ArgRulesError> {
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, rule) = entry.split_once(':').ok_or_else(|| ArgRulesError::NotAnEntry(entry.to_owned()))?;
            let name = name.trim();
            if !self.by_name.contains_key(name) {
                return Err(ArgRulesError::UnknownCommand(name.to_owned()));
            }
            let rule = Rule::parse(rule).map_err(|why| ArgRulesError::BadRule { command: name.to_owned(), why })?;
            self.rules.insert(name.to_owned(), rule);
        }
        Ok(self)
    }

    /// The resolved name and the whole argv to run for `requested` with the
    /// caller's `args`: the command's own argv, `--` if its rule says so,
    /// then `args`. `Err` says why: not allowed, or the arguments break
    /// the command's rule.
    pub fn command_line(&self, requested: &str, args: &[String]) -> Result<(String, Vec<String>), CommandRefused> {
        let (resolved, argv) =
            self.resolve(requested).ok_or_else(|| CommandRefused::NotAllowed(requested.to_owned()))?;
        let name = split(requested).map_or(requested, |(n, _)| n);
        let rule = self.rules.get(name).cloned().unwrap_or_default();
        rule.check(args).map_err(|why| CommandRefused::Arguments { command: resolved.clone(), why })?;
        let mut line = argv.to_vec();
        if rule.separator {
            line.push("--".into());
        }
        line.extend(args.iter().cloned());
        Ok((resolved, line))
    }

    /// The argv for `requested` (`name` or `name@version`), with the name
    /// and version it resolved to, as `name@version` when versioned.
    pub fn resolve(&self, requested: &str) -> Option<(String, &[String])> {
        let (name, version) = split(requested).ok()?;
        let versions = self.by_name.get(name)?;
        let (v, argv) = match version {
            Some(v) => versions.get_key_value(&v)?,
            None => versions.last_key_value()?,
        };
        let resolved = if *v == 0 { name.to_owned() } else { format!("{name}@{v}") };
        Some((resolved, argv))
    }

    /// Every runnable name: bare names, and `name@version` for each version.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, versions) in &self.by_name {
            out.push(name.clone());
            out.extend(versions.keys().filter(|v| **v > 0).map(|v| format!("{name}@{v}")));
        }
        out
    }
}

impl From<std::collections::HashMap<String, Vec<String>>> for Commands {
    /// Already split argvs; a name whose version does not parse is taken whole.
    fn from(map: std::collections::HashMap<String, Vec<String>>) -> Self {
        let mut by_name: BTreeMap<String, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for (entry, argv) in map.into_iter().filter(|(_, argv)| !argv.is_empty()) {
            let (name, version) = split(&entry).unwrap_or((&entry, None));
            by_name.entry(name.to_owned()).or_default().insert(version.unwrap_or(0), argv);
        }
        Self { by_name, rules: BTreeMap::new() }
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    /// The command is not in the allow-list.
    #[error("command {0:?} is not in [compute] allowed_commands")]
    NotAllowed(String),
    /// The arguments break the command's rule.
    #[error("command {command} {why} ([compute] command_args)")]
    Arguments {
        /// The command.
        command: String,
        /// Which rule, which argument.
        why: String,
    },
}

impl From<CommandRefused> for crate::api::compute::ComputeError {
    fn from(refused: CommandRefused) -> Self {
        match refused {
            CommandRefused::NotAllowed(name) => Self::CommandNotAllowed(name),
            arguments => Self::ArgumentsNotAllowed(arguments.to_string()),
        }
    }
}

/// `name@3` → (`name`, Some(3)); `name` → (`name`, None).
fn split(s: &str) -> Result<(&str, Option<u32>), String> {
    match s.split_once('@') {
        None => Ok((s, None)),
        Some((name, v)) => match v.parse::<u32>() {
            Ok(v) if v > 0 => Ok((name, Some(v))),
            _ => Err(format!("version {v:?} is not a positive whole number")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Commands {
        Commands::parse(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[test]
    fn bare_name_gets_the_highest_version() {
        let c = list(&[("transcode@1", "/bin/echo one"), ("transcode@2", "/bin/echo two"), ("true", "/bin/true")]);
        let (name, argv) = c.resolve("transcode").unwrap();
        assert_eq!((name.as_str(), argv), ("transcode@2", &["/bin/echo".to_string(), "two".into()][..]));
        assert_eq!(c.resolve("transcode@1").unwrap().0, "transcode@1");
        assert_eq!(c.resolve("true").unwrap().0, "true");
        assert!(c.resolve("transcode@3").is_none());
        assert!(c.resolve("transcode@x").is_none());
        assert!(c.resolve("rm").is_none());
        assert_eq!(c.names(), ["transcode", "transcode@1", "transcode@2", "true"]);
    }

    #[test]
    fn arguments_follow_each_commands_rule() {
        let c = list(&[("cat", "/bin/cat /safe.txt"), ("transcode@1", "/bin/echo t"), ("echo", "/bin/echo")])
            .with_arg_rules("cat: none; transcode: -- regex [a-z0-9_.]+")
            .unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(c.command_line("cat", &args(&[])).is_ok());
        let refused = c.command_line("cat", &args(&["/etc/hostname"])).unwrap_err();
        assert!(refused.to_string().contains("takes no arguments"), "{refused}");
        let (_, line) = c.command_line("transcode", &args(&["in.mp4"])).unwrap();
        assert_eq!(line, args(&["/bin/echo", "t", "--", "in.mp4"]));
        let refused = c.command_line("transcode@1", &args(&["ok", "--output=/etc/x"])).unwrap_err();
        assert!(refused.to_string().contains("argument 2"), "{refused}");
        assert_eq!(c.command_line("echo", &args(&["-n", "x"])).unwrap().1, args(&["/bin/echo", "-n", "x"]));
        assert!(matches!(c.command_line("rm", &[]), Err(CommandRefused::NotAllowed(_))));
        for bad in ["rm: none", "cat: maybe", "cat: regex (", "cat"] {
            assert!(list(&[("cat", "/bin/cat")]).with_arg_rules(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let e = Commands::parse(vec![("x@0".into(), "/bin/true".into())]).unwrap_err();
        assert!(matches!(&e, AllowListError::BadVersion { entry, .. } if entry == "x@0"), "{e}");
        let e = Commands::parse(vec![("y".into(), " ".into())]).unwrap_err();
        assert_eq!(e, AllowListError::EmptyCommand("y".into()));
        assert!(e.to_string().contains("y has an empty command"), "{e}");
    }
}
