//! A three-node RabbitMQ cluster of a test binary's own, on private ports,
//! for the tests that lose a node: the engine OpenStack deployments run.
//!
//! [`Cluster::shared`] starts it once per test binary (starting three
//! nodes and joining them takes a while); tests share it and keep apart by
//! vhost. A cluster left behind by a test binary that has exited (statics
//! are never dropped) is stopped by the next binary that starts one.
//!
//! [`Cluster::partitionable`] starts one whose nodes run on test hosts of
//! their own ([`crate::netns`]), so a test can cut a node off from the
//! others while clients still reach it: a network partition.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use crate::{broker::PrivateBroker, netns::Network};

/// Three joined nodes; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<PrivateBroker>,
    /// The test hosts the nodes run on, when partitionable (dropped after
    /// the nodes: fields drop in order).
    network: Option<Network>,
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
        Self::join(nodes, None)
    }

    /// Start three nodes, each on a test host of its own, with
    /// `pause_minority`, and join them: see [`partition`](Self::partition).
    pub fn partitionable() -> Self {
        let network = Network::new(3);
        let nodes = network.hosts.iter().map(PrivateBroker::start_on).collect();
        Self::join(nodes, Some(network))
    }

    fn join(nodes: Vec<PrivateBroker>, network: Option<Network>) -> Self {
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).expect("stop_app before joining");
            node.ctl(&["join_cluster", &nodes[0].node]).unwrap_or_else(|e| panic!("join_cluster: {e}"));
            node.ctl(&["start_app"]).expect("start_app after joining");
            node.wait_up(Duration::from_secs(60));
        }
        let cluster = Self { nodes, network };
        let running = cluster.running(0);
        assert_eq!(running.len(), 3, "three running nodes: {running:?}");
        cluster
    }

    /// The nodes node `i` sees running (none when it does not answer, or
    /// is paused).
    pub fn running(&self, i: usize) -> Vec<String> {
        let Ok(status) = self.nodes[i].ctl(&["cluster_status", "--formatter", "json"]) else { return Vec::new() };
        let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        status["running_nodes"].as_array().into_iter().flatten().filter_map(|n| Some(n.as_str()?.to_owned())).collect()
    }

    /// Cut node `i` off from the other nodes (both ways), leaving it
    /// reachable from this machine: a network partition, with `i` in the
    /// minority.
    ///
    /// # Panics
    /// On a cluster not started with [`partitionable`](Self::partitionable).
    pub fn partition(&self, i: usize) {
        self.network.as_ref().expect("a partitionable cluster").cut(i);
    }

    /// Undo [`partition`](Self::partition).
    pub fn heal(&self, i: usize) {
        self.network.as_ref().expect("a partitionable cluster").heal(i);
    }

    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(Cluster::start)
    }

    /// A transport URL naming every node (oslo's failover list), in `vhost`.
    pub fn url(&self, vhost: &str) -> String {
        self.url_from(vhost, 0)
    }

    /// The same list, starting at node `first` (where a client connects first).
    pub fn url_from(&self, vhost: &str, first: usize) -> String {
        let n = self.nodes.len();
        let hosts: Vec<String> =
            (0..n).map(|i| format!("guest:guest@{}", self.nodes[(first + i) % n].address())).collect();
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

/// What a test server served: how many times each `record` value.
pub type Served = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, usize>>>;

/// The API the cluster tests serve: `whoami` answers the server's name;
/// `record {value}` counts each value into `served`.
pub fn counting_api(name: &str, served: Served) -> nova_rpc::dispatcher::Dispatcher {
    use nova_rpc::{dispatcher::Router, RequestContext, RpcError, Version};
    #[derive(serde::Deserialize)]
    struct Record {
        value: u64,
    }
    let name = name.to_owned();
    let r = Router::new(Version::new(1, 0))
        .method("whoami", move |_ctx: RequestContext, _v: serde_json::Value| {
            let name = name.clone();
            async move { Ok::<_, RpcError>(name) }
        })
        .method("record", move |_ctx: RequestContext, r: Record| {
            *served.lock().unwrap_or_else(|p| p.into_inner()).entry(r.value).or_default() += 1;
            async { Ok::<_, RpcError>(()) }
        });
    nova_rpc::dispatcher::Dispatcher::new(vec![std::sync::Arc::new(r)])
}
