//! `nova.conf`: INI as oslo.config reads it, as a [`config::Format`].
//!
//! The rules are oslo.config's (`oslo_config/iniparser.py` and
//! `cfg.ConfigParser`), line by line:
//!
//! * `[section]`: the line must end with `]` and name something; section
//!   names are case-insensitive except `DEFAULT` (`[Database]` is
//!   `[database]`, `[default]` is not `[DEFAULT]`);
//! * `key = value` or `key: value`, whichever separator comes first; the
//!   value is trimmed, and one pair of matching quotes around it is removed;
//!   an option set twice keeps its last value;
//! * an indented line continues the value above it (joined with a newline);
//!   a blank line, a comment or a new key ends the value, and an indented
//!   line with no value above it is an error;
//! * `#` and `;` start a comment only at the start of a line;
//! * every assignment must come after a section header.
//!
//! Every value keeps its origin, `file:line`, so an error names the option
//! and where it was written.

use std::path::{Path, PathBuf};

use config::{Map, Value, ValueKind};

use super::{ConfigError, Origin};

/// One `key = value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    /// The section (lower-cased unless `DEFAULT`).
    pub section: String,
    /// The option name, with `-` folded to `_`.
    pub key: String,
    /// The value.
    pub value: String,
    /// Where it came from.
    pub file: PathBuf,
    /// 1-based line number of the key.
    pub line: usize,
}

/// oslo.config's section names: case-insensitive except `DEFAULT`.
pub fn normalize_section(name: &str) -> String {
    if name == "DEFAULT" {
        name.to_owned()
    } else {
        name.to_lowercase()
    }
}

/// Parse INI text from `file` (named in errors and origins).
pub fn parse(text: &str, file: &Path) -> Result<Vec<IniEntry>, ConfigError> {
    let error = |line: usize, reason: String| ConfigError::Syntax { file: file.to_owned(), line, reason };
    let mut section: Option<String> = None;
    let mut out: Vec<IniEntry> = Vec::new();
    // The assignment being read: (key, line, value pieces).
    let mut open: Option<(String, usize, Vec<String>)> = None;
    let mut flush = |open: &mut Option<(String, usize, Vec<String>)>, section: &Option<String>| {
        if let Some((key, line, pieces)) = open.take() {
            let Some(section) = section else {
                return Err(error(line, "an option before any [section]: start with [DEFAULT]".into()));
            };
            out.push(IniEntry {
                section: normalize_section(section),
                key: key.replace('-', "_"),
                value: pieces.join("\n"),
                file: file.to_owned(),
                line,
            });
        }
        Ok(())
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            flush(&mut open, &section)?;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match open.as_mut() {
                Some((_, _, pieces)) => pieces.push(line.trim_start().to_owned()),
                None => return Err(error(n, format!("a continuation line with no option above it: {line:?}"))),
            }
            continue;
        }
        flush(&mut open, &section)?;
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err(error(n, format!("a section header must end with ]: {line:?}")));
            }
            if line.len() <= 2 {
                return Err(error(n, "an empty section name".into()));
            }
            section = Some(line[1..line.len() - 1].to_owned());
        } else if line.starts_with(['#', ';']) {
            continue;
        } else {
            let (colon, equal) = (line.find(':'), line.find('='));
            let at = match (colon, equal) {
                (None, None) => return Err(error(n, format!("expected `key = value`, found {line:?}"))),
                (None, Some(e)) => e,
                (Some(c), None) => c,
                (Some(c), Some(e)) => c.min(e),
            };
            let key = line[..at].trim();
            if key.is_empty() {
                return Err(error(n, format!("an empty option name: {line:?}")));
            }
            let mut value = line[at + 1..].trim();
            let quoted = value.len() >= 2 && (value.starts_with('"') || value.starts_with('\''));
            if quoted && value.ends_with(&value[..1]) {
                value = &value[1..value.len() - 1];
            } else if value.len() == 1 && (value == "\"" || value == "'") {
                // A lone quote is its own pair, as oslo reads it.
                value = "";
            }
            open = Some((key.to_owned(), n, vec![value.to_owned()]));
        }
    }
    flush(&mut open, &section)?;
    Ok(out)
}

/// `nova.conf` for the `config` crate: sections are tables of strings,
/// each value's origin `file:line` (see [`Origin::encode`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsloIni;

impl config::Format for OsloIni {
    fn parse(
        &self,
        uri: Option<&String>,
        text: &str,
    ) -> Result<Map<String, Value>, Box<dyn std::error::Error + Send + Sync>> {
        let file = PathBuf::from(uri.cloned().unwrap_or_default());
        let mut sections: Map<String, Map<String, Value>> = Map::new();
        for e in parse(text, &file)? {
            let origin = Origin::File(e.file.clone(), e.line).encode();
            sections.entry(e.section).or_default().insert(e.key, Value::new(Some(&origin), ValueKind::String(e.value)));
        }
        Ok(sections.into_iter().map(|(s, t)| (s, Value::new(None, ValueKind::Table(t)))).collect())
    }
}

impl config::FileStoredFormat for OsloIni {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["conf", "ini"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Vec<(String, String, String)> {
        parse(text, Path::new("t.conf")).unwrap().into_iter().map(|e| (e.section, e.key, e.value)).collect()
    }

    fn err(text: &str) -> String {
        parse(text, Path::new("b.conf")).unwrap_err().to_string()
    }

    #[test]
    fn oslo_rules() {
        let e = parse("[DEFAULT]\n# c\nhost = a\n[Database]\nconnection=sqlite://x\n", Path::new("n.conf")).unwrap();
        assert_eq!((e[0].section.as_str(), e[0].line), ("DEFAULT", 3));
        assert_eq!((e[1].section.as_str(), e[1].value.as_str(), e[1].line), ("database", "sqlite://x", 5));
        assert_eq!(
            one("[compute]\nallowed_commands =\n  echo = /bin/echo\n\ttrue = /bin/true\n"),
            [("compute".into(), "allowed_commands".into(), "\necho = /bin/echo\ntrue = /bin/true".into())]
        );
        assert_eq!(
            one("[a]\nk = \"quoted\"\nl = 'x'\nm = \"half\n"),
            [
                ("a".into(), "k".into(), "quoted".into()),
                ("a".into(), "l".into(), "x".into()),
                ("a".into(), "m".into(), "\"half".into())
            ]
        );
        assert_eq!(one("[a]\nurl: http://h:1/x=y\n")[0].2, "http://h:1/x=y");
        assert_eq!(one("[a]\nk = v ; not a comment\n")[0].2, "v ; not a comment");
        assert_eq!(one("[default]\nk = 1\n")[0].0, "default");
    }

    #[test]
    fn errors_name_the_line() {
        assert!(err("[DEFAULT]\n[x\n").contains("b.conf:2"));
        assert!(err("[]\n").contains("empty section"));
        assert!(err("k = v\n").contains("before any [section]"));
        assert!(err("[a]\n  indented\n").contains("continuation"));
        assert!(err("[a]\nk = v\n\n  more\n").contains("b.conf:4"));
        assert!(err("[a]\njust words\n").contains("key = value"));
        assert!(err("[a]\n= v\n").contains("empty option name"));
    }
}
