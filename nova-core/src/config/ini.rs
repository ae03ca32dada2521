//! Reading `nova.conf`-style INI files: `[section]`, `key = value`,
//! `#`/`;` comments. Every value remembers the file and line it came from,
//! so a bad value can be reported where the user wrote it.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    /// The section, `DEFAULT` when none was given.
    pub section: String,
    /// The option name, with `-` folded to `_`.
    pub key: String,
    /// The value, trimmed.
    pub value: String,
    /// Where it came from.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

/// Parse INI text from `file` (used for error messages).
pub fn parse(text: &str, file: &Path) -> Result<Vec<IniEntry>, ConfigError> {
    let mut section = "DEFAULT".to_owned();
    let mut out: Vec<IniEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // Continuation lines (indented) extend the previous value, as oslo.config allows.
        if raw.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                if !last.value.is_empty() {
                    last.value.push('\n');
                }
                last.value.push_str(line);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| ConfigError::Syntax {
                file: file.to_owned(),
                line: i + 1,
                reason: format!("unterminated section header {line:?}"),
            })?;
            section = name.trim().to_owned();
            continue;
        }
        let (key, value) = line.split_once(['=', ':']).ok_or_else(|| ConfigError::Syntax {
            file: file.to_owned(),
            line: i + 1,
            reason: format!("expected `key = value`, found {line:?}"),
        })?;
        out.push(IniEntry {
            section: section.clone(),
            key: key.trim().replace('-', "_"),
            value: value.trim().to_owned(),
            file: file.to_owned(),
            line: i + 1,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_comments_and_continuations() {
        let text = "# c\nhost = a\n[database]\nconnection=sqlite://x\n[compute]\nallowed_commands =\n  echo = /bin/echo\n  true = /bin/true\n";
        let e = parse(text, Path::new("n.conf")).unwrap();
        assert_eq!(e[0].section, "DEFAULT");
        assert_eq!((e[1].section.as_str(), e[1].value.as_str(), e[1].line), ("database", "sqlite://x", 4));
        assert_eq!(e[2].value, "echo = /bin/echo\ntrue = /bin/true");
        let err = parse("[x\n", Path::new("b.conf")).unwrap_err().to_string();
        assert!(err.contains("b.conf:1"), "{err}");
    }
}
