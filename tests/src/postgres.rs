//! A PostgreSQL cluster of a test's own, on its own port, for tests that
//! stop the database — the shared server on 5432 is never touched. It runs
//! as the `postgres` user from a private directory, with trust auth.

use std::{path::PathBuf, process::Command};

use crate::{free_port, unique};

/// A private PostgreSQL cluster; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it keeps its files (and, with TLS, the test CA: `ca.pem`).
    pub dir: PathBuf,
    bin: PathBuf,
    tls: bool,
}

fn as_postgres(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", cmd])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd} as postgres: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

impl PrivatePostgres {
    /// `initdb` a cluster and start it.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A cluster that also accepts TLS, with a certificate for
    /// 127.0.0.1/localhost from a throw-away CA (`dir/ca.pem`).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is required for this test");
        let bin = versions
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("PostgreSQL's initdb is required for this test");
        let dir = std::env::temp_dir().join(unique("nova-pg"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if tls {
            crate::broker::make_certificates(&dir);
        }
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown to postgres failed");
        let pg = Self { port: free_port(), dir, bin, tls };
        let data = pg.data();
        as_postgres(&pg.tool("initdb"), &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"])
            .unwrap_or_else(|e| panic!("initdb failed: {e}"));
        pg.start_server();
        pg
    }

    fn tool(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// `postgresql://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the server (again) and wait until it accepts connections.
    pub fn start_server(&self) {
        let mut opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        if self.tls {
            let _ = std::fs::set_permissions(
                self.dir.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            );
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                self.dir.display()
            ));
        }
        let log = self.dir.join("server.log").display().to_string();
        as_postgres(&self.tool("pg_ctl"), &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"])
            .unwrap_or_else(|e| panic!("cannot start the private PostgreSQL: {e}"));
    }

    /// Stop the server at once (`-m fast`: open connections are cut).
    pub fn stop_server(&self) {
        as_postgres(&self.tool("pg_ctl"), &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .unwrap_or_else(|e| panic!("cannot stop the private PostgreSQL: {e}"));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.tool("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
