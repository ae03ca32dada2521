//! A RabbitMQ node of a test's own, on its own ports, for tests that stop
//! or freeze the broker — the shared node on 5672 is never touched. The
//! node runs as the `rabbitmq` user (as Debian's `rabbitmq-server` does)
//! from a private directory, with no plugins, optionally with a TLS
//! listener whose certificates come from a throw-away CA.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{free_port, netns, unique};

/// A private RabbitMQ node; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    /// `name@localhost`, or `name@<host>` on a test host of its own.
    pub node: String,
    /// The address clients reach it at: 127.0.0.1, or its test host's.
    pub host: String,
    /// The AMQP port.
    pub port: u16,
    /// The AMQPS port, when started with TLS.
    pub tls_port: Option<u16>,
    /// The management API's port, when started with the management plugin.
    pub management_port: Option<u16>,
    /// Where the node keeps its files (and the test CA, with TLS).
    pub dir: PathBuf,
    /// The test host it runs on, if not the machine itself.
    netns: Option<netns::Host>,
}

pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args)).unwrap_or_else(|e| panic!("openssl is required: {e}"));
}

/// A CA, a server certificate for 127.0.0.1/localhost signed by it, and a
/// client certificate: `ca.pem`, `server.{pem,key}`, `client.{pem,key}`.
pub fn make_certificates(dir: &Path) {
    let sh = |a: &[&str]| openssl(dir, a);
    sh(&["genrsa", "-out", "ca.key", "2048"]);
    sh(&["req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=nova-rs test CA", "-out", "ca.pem"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write san.ext");
    for name in ["server", "client"] {
        sh(&["genrsa", "-out", &format!("{name}.rsa"), "2048"]);
        sh(&["pkcs8", "-topk8", "-nocrypt", "-in", &format!("{name}.rsa"), "-out", &format!("{name}.key")]);
        sh(&["req", "-new", "-key", &format!("{name}.key"), "-subj", "/CN=localhost", "-out", &format!("{name}.csr")]);
        sh(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

impl PrivateBroker {
    /// Start a node on fresh ports and wait until it accepts connections.
    pub fn start(tls: bool) -> Self {
        Self::start_node(tls, false, None)
    }

    /// A node with the management plugin (its statistics every half second).
    pub fn start_with_management() -> Self {
        Self::start_node(false, true, None)
    }

    /// A node on a test host of its own ([`netns`]), on the standard ports
    /// there, for a cluster whose nodes a test can partition: it pauses
    /// when it finds itself in a minority (`pause_minority`, what
    /// production clusters of three run), and finds out in seconds
    /// (`net_ticktime` of 4 s, 60 s by default).
    pub fn start_on(host: &netns::Host) -> Self {
        Self::start_node(false, false, Some(host))
    }

    fn start_node(tls: bool, management: bool, on: Option<&netns::Host>) -> Self {
        let name = unique("novatest").replace('-', "_");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("broker dir");
        // A test host has its ports to itself.
        let (port, dist_port) = if on.is_some() { (5672, 25672) } else { (free_port(), free_port()) };
        let tls_port = tls.then(free_port);
        let management_port = management.then(free_port);
        let plugins = if management { "[rabbitmq_management].\n" } else { "[].\n" };
        std::fs::write(dir.join("enabled_plugins"), plugins).expect("plugins file");
        let mut conf = String::from("loopback_users = none\n");
        if let Some(p) = management_port {
            conf.push_str(&format!(
                "management.tcp.port = {p}\nmanagement.tcp.ip = 127.0.0.1\ncollect_statistics_interval = 500\n"
            ));
        }
        if let Some(p) = tls_port {
            make_certificates(&dir);
            conf.push_str(&format!(
                "listeners.ssl.default = {p}\nssl_options.cacertfile = {0}/ca.pem\nssl_options.certfile = {0}/server.pem\n\
                 ssl_options.keyfile = {0}/server.key\nssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = false\n",
                dir.display()
            ));
        }
        if on.is_some() {
            conf.push_str("cluster_partition_handling = pause_minority\n");
            std::fs::write(dir.join("advanced.config"), "[{kernel, [{net_ticktime, 4}]}].\n").expect("advanced.config");
            // Not the machine's rabbitmq-env.conf, which names the shared
            // node and keeps epmd and distribution on 127.0.0.1.
            std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        run(Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir))
            .unwrap_or_else(|e| panic!("the private broker runs as the rabbitmq user: {e}"));
        let (node, host) = match on {
            Some(h) => (format!("{name}@{}", h.name), h.ip.to_string()),
            None => (format!("{name}@localhost"), "127.0.0.1".to_owned()),
        };
        let mut env = vec![
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_NODE_IP_ADDRESS", if on.is_some() { "0.0.0.0".to_owned() } else { host.clone() }),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").display().to_string()),
            ("RABBITMQ_LOG_BASE", dir.join("log").display().to_string()),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins").display().to_string()),
            ("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq").display().to_string()),
            ("RABBITMQ_PID_FILE", dir.join("pid").display().to_string()),
        ];
        if on.is_some() {
            env.push(("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf").display().to_string()));
            env.push(("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config").display().to_string()));
        }
        let broker = Self { node, host, port, tls_port, management_port, dir, netns: on.cloned() };
        run(broker.command("rabbitmq-server").arg("-detached").envs(env))
            .unwrap_or_else(|e| panic!("RabbitMQ is required for this test: {e}"));
        // The node registers with epmd a moment after `-detached` returns.
        let until = std::time::Instant::now() + Duration::from_secs(90);
        while let Err(e) = broker.ctl(&["await_startup", "--timeout", "10"]) {
            assert!(std::time::Instant::now() < until, "the private broker did not start: {e}");
            std::thread::sleep(Duration::from_millis(500));
        }
        broker
    }

    /// `program`, run where the node runs (on its test host, with its own
    /// `rabbitmq-env.conf`), or on the machine.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(h) => {
                let mut cmd = h.command(program);
                cmd.env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"));
                // The CLI names itself after this host, which every node
                // can reach: nodes stream `list_*` rows to it directly.
                cmd.env("RABBITMQ_NODENAME", &self.node);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Run `rabbitmqctl -n <node> args…`.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        run(self.command("rabbitmqctl").arg("-q").arg("-n").arg(&self.node).args(args))
    }

    /// `host:port`, where clients reach it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `rabbit://guest:guest@<host>:<port>/`.
    pub fn url(&self) -> String {
        format!("rabbit://guest:guest@{}/", self.address())
    }

    /// Stop the broker (every connection drops, transient queues go).
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]).expect("stop_app");
    }

    /// Start it again and wait until it serves.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]).expect("start_app");
        self.ctl(&["await_startup", "--timeout", "60"]).expect("await_startup");
    }

    /// Freeze the node's Erlang VM (SIGSTOP): connections stay open, nothing
    /// answers. Returns once the kernel reports the VM stopped (or running
    /// again).
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        let pid = std::fs::read_to_string(self.dir.join("pid")).map_err(|e| format!("broker pid file: {e}"))?;
        let pid = pid.trim();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        run(Command::new("kill").args([sig, pid]))?;
        // The state after the command name in /proc/<pid>/stat: `T` when stopped.
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
                s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "T"))
            })
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match stopped() {
                Some(state) if state == frozen => return Ok(()),
                None => return Err(format!("broker process {pid} is gone")),
                Some(_) if std::time::Instant::now() > until => {
                    return Err(format!("broker process {pid} is not {}", if frozen { "stopped" } else { "running" }))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// How many messages queue `name` holds (in vhost `/`).
    pub fn queue_depth(&self, name: &str) -> Option<u64> {
        let out = self.ctl(&["list_queues", "name", "messages", "--no-table-headers"]).ok()?;
        out.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()? == name).then(|| parts.next()?.parse().ok()).flatten()
        })
    }

    /// Wait for the node to be up after a start or `start_app`.
    pub fn wait_up(&self, timeout: Duration) {
        let secs = timeout.as_secs().max(1).to_string();
        self.ctl(&["await_startup", "--timeout", &secs]).expect("broker up");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.freeze(false);
        if let Err(e) = self.ctl(&["stop"]) {
            eprintln!("cleanup: stopping {}: {e}", self.node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
