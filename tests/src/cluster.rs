//! A three-node RabbitMQ cluster of a test binary's own, on private ports,
//! for the tests that lose a node: the engine OpenStack deployments run.
//!
//! [`Cluster::shared`] starts it once per test binary (starting three
//! nodes and joining them takes a while); tests share it and keep apart by
//! vhost. A cluster left behind by a test binary that has exited (statics
//! are never dropped) is stopped by the next binary that starts one.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use crate::broker::PrivateBroker;

/// Three joined nodes; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<PrivateBroker>,
}

/// Where running clusters record their owner (the test process).
fn registry() -> PathBuf {
    std::env::temp_dir().join("nova-rs-test-clusters")
}

/// Stop the nodes of clusters whose test process is gone.
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(registry()) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let owner = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        for node in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            let _ = Command::new("rabbitmqctl").args(["-q", "-n", node, "stop"]).output();
        }
        let _ = std::fs::remove_file(&path);
    }
}

impl Cluster {
    /// Start three nodes and join them into one cluster.
    pub fn start() -> Self {
        reap_orphans();
        let nodes: Vec<PrivateBroker> = (0..3).map(|_| PrivateBroker::start(false)).collect();
        std::fs::create_dir_all(registry()).expect("cluster registry");
        let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        std::fs::write(registry().join(std::process::id().to_string()), names.join("\n")).expect("cluster registry");
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).expect("stop_app before joining");
            node.ctl(&["join_cluster", &nodes[0].node]).unwrap_or_else(|e| panic!("join_cluster: {e}"));
            node.ctl(&["start_app"]).expect("start_app after joining");
            node.wait_up(Duration::from_secs(60));
        }
        let cluster = Self { nodes };
        let status = cluster.nodes[0].ctl(&["cluster_status", "--formatter", "json"]).expect("cluster_status");
        let running = serde_json::from_str::<serde_json::Value>(&status).expect("cluster_status JSON")["running_nodes"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(running, 3, "three running nodes: {status}");
        cluster
    }

    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(Cluster::start)
    }

    /// A transport URL naming every node (oslo's failover list), in `vhost`.
    pub fn url(&self, vhost: &str) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("guest:guest@127.0.0.1:{}", n.port)).collect();
        format!("rabbit://{}/{vhost}", hosts.join(","))
    }

    /// A new vhost on the cluster, with guest's permissions.
    pub fn vhost(&self) -> String {
        let name = crate::unique("cluster");
        self.nodes[0].ctl(&["add_vhost", &name]).expect("add_vhost");
        self.nodes[0].ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).expect("set_permissions");
        name
    }

    /// The node that hosts queue `queue` in `vhost` (a classic queue's home,
    /// a quorum or stream queue's leader).
    pub fn node_of(&self, vhost: &str, queue: &str) -> &PrivateBroker {
        // The text form names the node in a classic queue's pid (JSON does not).
        let out = self.nodes[0]
            .ctl(&["list_queues", "-p", vhost, "name", "leader", "pid", "--no-table-headers"])
            .expect("list_queues");
        let row = out
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("queue {queue} in {vhost}: {out}"));
        self.nodes
            .iter()
            .find(|n| row.contains(&n.node))
            .unwrap_or_else(|| panic!("no node of ours hosts {queue}: {row}"))
    }

    /// Consumers on each queue of `vhost`, by queue name (from any running node).
    pub fn consumers(&self, vhost: &str) -> std::collections::HashMap<String, u64> {
        for node in &self.nodes {
            let Ok(out) = node.ctl(&["list_queues", "-p", vhost, "name", "consumers", "--formatter", "json"]) else {
                continue;
            };
            let Ok(serde_json::Value::Array(rows)) = serde_json::from_str::<serde_json::Value>(&out) else { continue };
            return rows
                .iter()
                .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["consumers"].as_u64()?)))
                .collect();
        }
        std::collections::HashMap::new()
    }
}
