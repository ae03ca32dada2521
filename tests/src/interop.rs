//! Real oslo.messaging peers (`tests/interop/peer.py`) as subprocesses, for
//! the interop tests. The Python comes from the virtualenv `./test.sh`
//! builds under the target directory (`interop-venv`), or from
//! `NOVA_INTEROP_PYTHON`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// The interop virtualenv's Python (oslo.messaging and oslo.config).
pub fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("NOVA_INTEROP_PYTHON") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe.ancestors().nth(3).expect("target dir");
    let p = target.join("interop-venv/bin/python");
    assert!(
        p.exists(),
        "the interop tests need oslo.messaging in a virtualenv at {}: run ./test.sh, which creates it",
        p.display()
    );
    p
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/peer.py")
}

/// One Python peer: an oslo.messaging RPC server or a scripted RPC client.
/// Killed when dropped.
#[derive(Debug)]
pub struct PyPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Where its stderr goes.
    pub log: std::path::PathBuf,
}

impl PyPeer {
    fn start(args: &[&str], log_dir: &std::path::Path) -> Self {
        let log = log_dir.join(format!("{}.log", crate::unique("python")));
        // A process group of its own, as under a service manager: oslo's
        // queue manager reads its group leader's /proc entry, which must exist.
        let mut child = Command::new(python())
            .process_group(0)
            .arg("-W")
            .arg("ignore")
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Python peer: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self { stdin: child.stdin.take(), child, lines, log };
        let ready = peer.next_line(Duration::from_secs(60));
        assert_eq!(ready.as_deref(), Some("READY"), "the Python peer did not start: {}", peer.stderr());
        peer
    }

    /// An oslo.messaging RPC server for `topic` as `server`; `flags` are
    /// `--durable` and/or `--quorum`.
    pub fn server(
        url: &str,
        exchange: &str,
        topic: &str,
        server: &str,
        flags: &[&str],
        log_dir: &std::path::Path,
    ) -> Self {
        let mut args = vec!["server", url, exchange, topic, server];
        args.extend_from_slice(flags);
        Self::start(&args, log_dir)
    }

    /// An oslo.messaging RPC client that makes the requests it is sent.
    pub fn client(url: &str, exchange: &str, flags: &[&str], log_dir: &std::path::Path) -> Self {
        let mut args = vec!["client", url, exchange];
        args.extend_from_slice(flags);
        Self::start(&args, log_dir)
    }

    /// An oslo.messaging Notifier that sends what it is sent (see
    /// `peer.py`); `flags`: `--driver=messaging`, `--modern`.
    pub fn notifier(url: &str, exchange: &str, flags: &[&str], log_dir: &std::path::Path) -> Self {
        let mut args = vec!["notifier", url, exchange];
        args.extend_from_slice(flags);
        Self::start(&args, log_dir)
    }

    /// An oslo.messaging NotificationListener on `topic` that prints each
    /// notification as a JSON line; `flags`: `--pool=NAME`, `--modern`.
    pub fn listener(url: &str, exchange: &str, topic: &str, flags: &[&str], log_dir: &std::path::Path) -> Self {
        let mut args = vec!["listener", url, exchange, topic];
        args.extend_from_slice(flags);
        Self::start(&args, log_dir)
    }

    /// The next JSON line it prints within `timeout`, if any.
    pub fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.next_line(timeout)?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
    }

    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Make one request (see `peer.py`); `{"ok": …}` or `{"error": {…}}`.
    pub fn request(&mut self, request: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("client stdin");
        writeln!(stdin, "{request}").and_then(|()| stdin.flush()).expect("write to the Python client");
        let line = self
            .next_line(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no answer from the Python client to {request}: {}", self.stderr()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }

    /// Wait up to `timeout` for a line it prints that starts with
    /// `prefix` (skipping others); the line.
    pub fn line_starting(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.next_line(left)?;
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        // Closing stdin asks it to stop cleanly (deleting its fanout and
        // reply queues); kill it if it does not.
        drop(self.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
