//! nova-rs reads INI files exactly as oslo.config does: every value of
//! every file in `tests/fixtures/ini/` and of the sample configuration
//! (its options uncommented) compared with what the real oslo.config reads
//! (through `tests/interop/oslo_ini.py`), errors on the same line; and the
//! other formats (TOML, YAML, JSON) layered the same way.

use std::{collections::BTreeMap, path::PathBuf};

use nova_core::config::{ini, Config, OptSpec, Origin};
use nova_tests::TempDir;
use serde_json::Value;

type Read = BTreeMap<String, BTreeMap<String, String>>;

fn fixtures() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ini");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    files
}

/// What oslo.config reads from each file: its values, or its error.
fn oslo(files: &[PathBuf]) -> Vec<Result<Read, String>> {
    let out = std::process::Command::new(nova_tests::interop::python())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/oslo_ini.py"))
        .args(files)
        .output()
        .expect("the interop virtualenv's python (./test.sh makes it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            match v.get("error") {
                Some(e) => Err(e.as_str().unwrap().to_owned()),
                None => Ok(serde_json::from_value(v["values"].clone()).unwrap()),
            }
        })
        .collect()
}

fn nova(file: &PathBuf) -> Result<Read, (usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    match ini::parse(&text, file) {
        Ok(entries) => {
            let mut read = Read::new();
            for e in entries {
                read.entry(e.section).or_default().insert(e.key, e.value);
            }
            Ok(read)
        }
        Err(nova_core::config::ConfigError::Syntax { line, reason, .. }) => Err((line, reason)),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_value_as_oslo_config_reads_it() {
    let dir = TempDir::new("ini");
    // The sample with every option set to its default.
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/nova/nova.conf.sample")).unwrap();
    let filled: String = sample
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut files = fixtures();
    files.push(dir.write("sample-filled.conf", &filled));
    files.push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/nova/nova.conf.sample"));
    let theirs = oslo(&files);
    let mut compared = 0;
    for (file, theirs) in files.iter().zip(theirs) {
        match (nova(file), theirs) {
            (Ok(ours), Ok(theirs)) => {
                assert_eq!(ours, theirs, "{}", file.display());
                compared += ours.values().map(BTreeMap::len).sum::<usize>();
            }
            (Err((line, reason)), Err(theirs)) => {
                assert!(
                    theirs.contains(&format!(":{line},")),
                    "{}: we blame line {line} ({reason}), oslo: {theirs}",
                    file.display()
                );
            }
            (ours, theirs) => panic!("{}: nova-rs {ours:?}, oslo.config {theirs:?}", file.display()),
        }
    }
    assert!(compared > 60, "values compared: {compared}");
}

const SPECS: &[OptSpec] = &[
    OptSpec { section: "DEFAULT", name: "host", default: "h0", help: "" },
    OptSpec { section: "DEFAULT", name: "debug", default: "false", help: "" },
    OptSpec { section: "compute", name: "allowed_commands", default: "", help: "" },
    OptSpec { section: "compute", name: "max_tasks", default: "4", help: "" },
];

#[test]
fn toml_yaml_and_json_layer_like_ini() {
    let dir = TempDir::new("formats");
    let ini = dir.write("a.conf", "[DEFAULT]\nhost = from-ini\ndebug = true\n[compute]\nmax_tasks = 2\n");
    let toml = dir.write("b.toml", "[compute]\nmax_tasks = 8\n[compute.allowed_commands]\necho = \"/bin/echo\"\n");
    let yaml = dir.write("c.yaml", "DEFAULT:\n  host: from-yaml\n");
    let json = dir.write("d.json", r#"{"Compute": {"max_tasks": 16}}"#);
    let c = Config::load(SPECS, &[ini.clone(), toml.clone(), yaml.clone(), json.clone()], None, &[]).unwrap();
    assert_eq!(c.raw("DEFAULT", "host"), Some("from-yaml"));
    assert_eq!(c.origin("DEFAULT", "host"), Some(&Origin::File(yaml, 0)));
    assert_eq!(c.raw("DEFAULT", "debug"), Some("true"));
    assert_eq!(c.origin("DEFAULT", "debug"), Some(&Origin::File(ini.clone(), 3)));
    assert_eq!(
        c.require::<usize>("compute", "max_tasks").unwrap(),
        16,
        "the last file wins; sections case-insensitive"
    );
    assert_eq!(
        c.get_dict("compute", "allowed_commands").unwrap().unwrap(),
        [("echo".to_owned(), "/bin/echo".to_owned())]
    );
    assert_eq!(c.origin("compute", "allowed_commands"), Some(&Origin::File(toml, 0)));
    // A bad value names the option and where it was written.
    let bad = dir.write("bad.conf", "[compute]\n\nmax_tasks = many\n");
    let c = Config::load(SPECS, &[bad], None, &[]).unwrap();
    let e = c.require::<usize>("compute", "max_tasks").unwrap_err().to_string();
    assert!(e.contains("[compute] max_tasks") && e.contains("bad.conf:3"), "{e}");
    // A malformed file is refused with its line; flags beat everything.
    let broken = dir.write("broken.conf", "[DEFAULT]\nhost\n");
    let e = Config::load(SPECS, &[broken], None, &[]).unwrap_err().to_string();
    assert!(e.contains("broken.conf:2"), "{e}");
    let c = Config::load(SPECS, &[ini], None, &[("DEFAULT", "host", "from-flag".into(), "--host")]).unwrap();
    assert_eq!(
        (c.raw("DEFAULT", "host"), c.origin("DEFAULT", "host")),
        (Some("from-flag"), Some(&Origin::Flag("--host".into())))
    );
    let yaml_list = dir.write("list.yaml", "not_a_section: 3\n");
    let e = Config::load(SPECS, &[yaml_list], None, &[]).unwrap_err().to_string();
    assert!(e.contains("not a section"), "{e}");
}
