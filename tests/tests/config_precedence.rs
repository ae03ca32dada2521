//! Configuration: defaults < files (and --config-dir) < environment < flags;
//! bad values name the option and where they came from; unknown options
//! are warned about; `--help` lists the common flags and no secrets.

use std::{path::PathBuf, process::Command};

use nova_core::config::{Config, CoreOptions, OptSpec, Origin, CORE_OPTIONS};
use nova_tests::{bin_path, TempDir};

const TEST_OPTS: &[OptSpec] = &[
    OptSpec { section: "probe", name: "level", default: "default", help: "test" },
    OptSpec { section: "probe", name: "from_dir", default: "default", help: "test" },
];

#[test]
fn each_layer_overrides_the_one_below() {
    let dir = TempDir::new("conf");
    let a = dir.write("a.conf", "[probe]\nlevel = file-a\nfrom_dir = file-a\n");
    let b = dir.write("b.conf", "[probe]\nlevel = file-b\n");
    let conf_d = TempDir::new("conf-d");
    conf_d.write("10-x.conf", "[probe]\nfrom_dir = dir\n");
    let specs: Vec<OptSpec> = CORE_OPTIONS.iter().chain(TEST_OPTS).copied().collect();
    let load = |flags: &[(&str, &str, String, &str)]| {
        Config::load(&specs, &[a.clone(), b.clone()], Some(conf_d.path()), flags).unwrap()
    };

    let c = load(&[]);
    assert_eq!(c.raw("probe", "level"), Some("file-b"), "later files win");
    assert_eq!(c.raw("probe", "from_dir"), Some("dir"), "--config-dir comes after --config-file");
    assert_eq!(c.origin("probe", "level"), Some(&Origin::File(b.clone(), 2)));
    assert_eq!(c.raw("DEFAULT", "control_exchange"), Some("nova"), "defaults apply");

    // The environment beats files (this is the only test in this binary touching it).
    std::env::set_var("NOVA_PROBE__LEVEL", "env");
    let c = load(&[]);
    assert_eq!(c.raw("probe", "level"), Some("env"));
    assert_eq!(c.origin("probe", "level"), Some(&Origin::Env("NOVA_PROBE__LEVEL".into())));
    // Flags beat the environment.
    let c = load(&[("probe", "level", "flag".into(), "--level")]);
    assert_eq!(c.raw("probe", "level"), Some("flag"));
    std::env::remove_var("NOVA_PROBE__LEVEL");
}

#[test]
fn bad_values_name_the_option_and_the_file() {
    let dir = TempDir::new("conf");
    let f = dir.write("bad.conf", "[DEFAULT]\nreport_interval = soon\n");
    let c = Config::load(CORE_OPTIONS, std::slice::from_ref(&f), None, &[]).unwrap();
    let err = CoreOptions::from_config(&c).unwrap_err().to_string();
    assert!(err.contains("[DEFAULT] report_interval") && err.contains(&format!("{}:2", f.display())), "{err}");
    let f = dir.write("bad2.conf", "[DEFAULT]\ntransport_url = rabbit://u:hunter2@h:notaport/\n");
    let c = Config::load(CORE_OPTIONS, &[f], None, &[]).unwrap();
    let err = CoreOptions::from_config(&c).unwrap_err().to_string();
    assert!(err.contains("transport_url") && err.contains("notaport") && !err.contains("hunter2"), "{err}");
    let f = dir.write("unknown.conf", "[DEFAULT]\nno_such_option = 1\n[another_program]\nits_option = 2\n");
    let c = Config::load(CORE_OPTIONS, &[f], None, &[]).unwrap();
    assert_eq!(c.unknown().len(), 1, "a section of another program's is not ours to warn about");
    assert!(c.unknown()[0].contains("no_such_option"));
}

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path(bin)).args(args).env_remove("RUST_LOG").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn binaries_report_config_errors_and_list_their_flags() {
    let dir = TempDir::new("conf");
    let state = dir.path().display().to_string();
    let bad: PathBuf = dir.write("bad.conf", "[DEFAULT]\nexecutor_thread_pool_size = lots\nsurprise = 1\n");
    let (ok, out) = run("nova-compute", &["--config-file", bad.to_str().unwrap(), "--state-path", &state]);
    assert!(!ok, "{out}");
    assert!(out.contains("executor_thread_pool_size") && out.contains("bad.conf:2"), "{out}");

    let unknown = dir.write("unknown.conf", "[DEFAULT]\nsurprise = 1\n");
    let (ok, out) = run(
        "nova-compute",
        &["--config-file", unknown.to_str().unwrap(), "--state-path", &state, "--manager", "nope::Nope"],
    );
    assert!(!ok);
    assert!(
        out.contains("surprise") && out.contains("ignoring unknown option"),
        "unknown options are warned about: {out}"
    );
    assert!(
        out.contains("unknown manager \"nope::Nope\"") && out.contains("nova_services::compute::ComputeManager"),
        "{out}"
    );

    let (ok, out) = run("nova-compute", &["--help"]);
    assert!(ok);
    assert!(out.starts_with("Runs allow-listed tasks"), "--help opens with the binary's own about: {out}");
    let (ok, version) = run("nova-compute", &["-V"]);
    assert!(ok && version.trim() == concat!("nova-compute (nova-rs ", env!("CARGO_PKG_VERSION"), ")"), "{version}");
    for flag in [
        "--config-file",
        "--config-dir",
        "--host",
        "--transport-url",
        "--control-exchange",
        "--database-connection",
        "--manager",
        "--debug",
    ] {
        assert!(out.contains(flag), "--help lists {flag}: {out}");
    }
}

/// What `nova-manage <args>` prints.
fn manage(args: &[&str]) -> String {
    let out = Command::new(bin_path("nova-manage")).args(args).output().expect("nova-manage runs");
    assert!(out.status.success(), "nova-manage {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn sample_config_documents_every_option() {
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/nova/nova.conf.sample"))
        .expect("etc/nova/nova.conf.sample");
    assert_eq!(
        sample,
        manage(&["config", "sample"]),
        "regenerate with: cargo run --bin nova-manage -- config sample > etc/nova/nova.conf.sample"
    );
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md"))
        .expect("docs/configuration.md");
    assert_eq!(
        reference,
        manage(&["config", "reference"]),
        "regenerate with: cargo run --bin nova-manage -- config reference > docs/configuration.md"
    );
}

/// Every `[oslo_messaging_rabbit]` option oslo.messaging 18.3.1 accepts is
/// one of ours (none is "unknown"), with oslo's default (but the one nova-rs
/// changes on purpose), as captured in
/// `tests/fixtures/oslo-wire/oslo_config_defaults.json`.
#[test]
fn every_oslo_rabbit_option_is_known_with_oslos_default() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/oslo-wire/oslo_config_defaults.json");
    let captured: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let oslo = captured["oslo_messaging_rabbit"].as_object().expect("oslo's rabbit options");
    assert!(oslo.len() >= 37, "the capture lists oslo's options: {}", oslo.len());
    let c = Config::load(CORE_OPTIONS, &[], None, &[]).unwrap();
    for (name, default) in oslo {
        let ours = CORE_OPTIONS
            .iter()
            .find(|o| o.section == "oslo_messaging_rabbit" && o.name == name)
            .unwrap_or_else(|| panic!("oslo's [oslo_messaging_rabbit] {name} is unknown to nova-rs"));
        let expected = match default {
            // Computed from the machine in both: the hostname and the program name.
            serde_json::Value::String(s) if s.starts_with("<machine") => continue,
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        // The one default nova-rs changes on purpose (docs/migration.md):
        // a fleet spreads over the cluster's nodes.
        let expected = if name == "kombu_failover_strategy" {
            assert_eq!(expected, "round-robin", "oslo's default");
            "shuffle".to_owned()
        } else {
            expected
        };
        let same = match (expected.parse::<f64>(), ours.default.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => expected == ours.default,
        };
        assert!(same, "{name}: oslo's default is {expected:?}, ours {:?}", ours.default);
        assert_eq!(c.raw("oslo_messaging_rabbit", name).unwrap_or_default(), ours.default, "{name}");
    }
}

/// `nova-rpc`'s exit codes say what went wrong, and none is clap's usage code 2.
#[test]
fn nova_rpc_exit_codes() {
    let run = |args: &[&str]| {
        let out = Command::new(bin_path("nova-rpc")).args(args).output().expect("nova-rpc runs");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("Exit codes:") && help.contains("4  the call timed out"), "{help}");
    assert_eq!(run(&["--no-such-flag"]).0, Some(2), "usage errors are clap's 2");
    let bus = format!("memory://{}", nova_tests::unique("cli"));
    let timeout = ["call", "nobody", "ping", "--timeout", "0.2", "--transport-url", bus.as_str()];
    assert_eq!(run(&timeout).0, Some(4), "a timeout");
    // Above its --version-cap, a call fails here, unsent (it would time out if sent).
    let out = Command::new(bin_path("nova-rpc"))
        .args(["call", "nobody", "ping", "--version", "1.1", "--version-cap", "1.0", "--transport-url", bus.as_str()])
        .output()
        .expect("nova-rpc runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() != Some(0) && out.status.code() != Some(4), "{:?} {said}", out.status);
    assert!(said.contains("version cap is 1.0"), "{said}");
}

/// `nova-manage service list` shows each record's service version.
#[tokio::test]
async fn service_list_shows_each_records_version() {
    let dir = TempDir::new("manage-list");
    let url = format!("sqlite:///{}", dir.path().join("nova.sqlite").display());
    let db = nova_core::db::Database::connect(&url).await.unwrap();
    db.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = nova_core::db::services::ServiceRecords::new(db.clone());
    records.create_or_update("c1", "nova-compute", "compute", 2).await.unwrap();
    records.create_or_update("c0", "nova-compute", "compute", 0).await.unwrap();
    db.close().await;
    let state = dir.path().display().to_string();
    let table = manage(&["--database-connection", &url, "--state-path", &state, "service", "list"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("Version"), "{table}");
    let row =
        |host: &str| table.lines().find(|l| l.contains(host)).map(|l| l.split_whitespace().nth(4).map(str::to_owned));
    assert_eq!((row("c1"), row("c0")), (Some(Some("2".into())), Some(Some("0".into()))), "{table}");
    let json = manage(&["--database-connection", &url, "--state-path", &state, "service", "list", "--json"]);
    assert!(json.contains("\"version\": 2") && json.contains("\"version\": 0"), "{json}");
}
