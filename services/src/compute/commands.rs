//! The allow-list of commands tasks may run (`[compute] allowed_commands`).
//!
//! Each entry is `name = argv`. A name may carry a version, `transcode@2`:
//! a task asking for `transcode@1` gets that version, and a bare
//! `transcode` gets the highest one. The list is reloaded on SIGHUP; a
//! running task keeps the argv it started with.

use std::collections::BTreeMap;

/// A parsed allow-list; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    /// `name` → version (0 when unversioned) → argv.
    by_name: BTreeMap<String, BTreeMap<u32, Vec<String>>>,
}

impl Commands {
    /// Parse `name = argv` pairs; an empty argv or a bad version is an error
    /// that names the entry.
    pub fn parse(entries: Vec<(String, String)>) -> Result<Self, String> {
        let mut by_name: BTreeMap<String, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for (entry, argv) in entries {
            let argv: Vec<String> = argv.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(format!("[compute] allowed_commands: {entry} has an empty command"));
            }
            let (name, version) = split(&entry).map_err(|e| format!("[compute] allowed_commands: {entry}: {e}"))?;
            if name.is_empty() {
                return Err(format!("[compute] allowed_commands: {entry:?} has no name"));
            }
            by_name.entry(name.to_owned()).or_default().insert(version.unwrap_or(0), argv);
        }
        Ok(Self { by_name })
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
        Self { by_name }
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
    fn bad_entries_are_named() {
        let e = Commands::parse(vec![("x@0".into(), "/bin/true".into())]).unwrap_err();
        assert!(e.contains("x@0"), "{e}");
        let e = Commands::parse(vec![("y".into(), " ".into())]).unwrap_err();
        assert!(e.contains("y has an empty command"), "{e}");
    }
}
