//! Test hosts of our own on one machine: each a network namespace with a
//! veth pair into a bridge of the test's own, so the processes in them talk
//! over a real IP network that a test can cut.
//!
//! The machine (the tests, the clients) reaches every host over the
//! bridge; hosts reach each other over it too. [`Network::cut`] drops the
//! traffic between one host and the others, both ways, with blackhole
//! routes inside the namespaces, while the machine still reaches every
//! host: a partition between cluster nodes that leaves AMQP up. Nothing
//! global is touched (no firewall rule, no forwarding sysctl), and
//! deleting a namespace deletes its routes and veth.
//!
//! Everything is removed on drop. A network left by a test process that
//! died (killed, or a static never dropped) is removed by the next one
//! that starts a network, and by the test command's last step, which
//! deletes every namespace and bridge named `nvt…`.

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use crate::broker::run;

/// A host of the test's own: a namespace and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name, which is also the host's name (every
    /// namespace's `/etc/hosts` names every host of the network).
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Host {
    /// `program args…` run inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

/// Hosts on a bridge of their own; see the module docs.
#[derive(Debug)]
pub struct Network {
    tag: String,
    /// The hosts, in the order they were made.
    pub hosts: Vec<Host>,
}

/// Where live networks record their owner (the test process) and tag.
fn registry() -> PathBuf {
    std::env::temp_dir().join("nova-rs-test-netns")
}

/// `ip args…`, panicking with what it said when it fails.
fn ip(args: &[&str]) {
    run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("network namespaces need root and iproute2: {e}"));
}

/// Remove the namespaces and bridge of the network tagged `tag`, whatever
/// is left of them: every process in a namespace is killed first.
fn remove(tag: &str) {
    let prefix = format!("nvt{tag}n");
    let listed = run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for ns in listed.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(&prefix)) {
        let pids = run(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
    }
    let _ = Command::new("ip").args(["link", "del", &format!("nvt{tag}br")]).output();
}

/// Remove the networks of test processes that are gone.
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(registry()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, tag)) = name.split_once('-') else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove(tag);
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A /24 in 10.213.0.0/16 that no interface of the machine uses yet.
fn free_subnet() -> u8 {
    let used = run(Command::new("ip").args(["-o", "-4", "addr", "show"])).unwrap_or_default();
    (1..=254u8).find(|k| !used.contains(&format!(" 10.213.{k}."))).expect("a free 10.213.x.0/24 for the test network")
}

impl Network {
    /// `count` hosts on a new bridge, each with `/etc/hosts` naming them all.
    pub fn new(count: usize) -> Self {
        reap_orphans();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Interface names are at most 15 bytes: `nvt` + tag + `h9`.
        let tag = format!("{:x}", (std::process::id() << 4 | (n & 0xf)) & 0xff_ffff);
        std::fs::create_dir_all(registry()).expect("netns registry");
        std::fs::write(registry().join(format!("{}-{tag}", std::process::id())), "").expect("netns registry");
        let subnet = free_subnet();
        let bridge = format!("nvt{tag}br");
        // Made before anything is created, so a panic below removes what was.
        let mut network = Self { tag: tag.clone(), hosts: Vec::new() };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.213.{subnet}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let hosts: Vec<Host> = (0..count)
            .map(|i| Host {
                name: format!("nvt{tag}n{i}"),
                ip: Ipv4Addr::new(10, 213, subnet, u8::try_from(i + 2).expect("at most 250 hosts")),
            })
            .collect();
        let hosts_file: String = std::iter::once("127.0.0.1 localhost\n".to_owned())
            .chain(hosts.iter().map(|h| format!("{} {}\n", h.ip, h.name)))
            .collect();
        for (i, h) in hosts.iter().enumerate() {
            let (outside, inside) = (format!("nvt{tag}h{i}"), format!("nvt{tag}c{i}"));
            ip(&["netns", "add", &h.name]);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &h.name]);
            ip(&["link", "set", &outside, "master", &bridge, "up"]);
            ip(&["-n", &h.name, "addr", "add", &format!("{}/24", h.ip), "dev", &inside]);
            ip(&["-n", &h.name, "link", "set", &inside, "up"]);
            ip(&["-n", &h.name, "link", "set", "lo", "up"]);
            // `ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts.
            let etc = PathBuf::from("/etc/netns").join(&h.name);
            std::fs::create_dir_all(&etc).expect("/etc/netns");
            std::fs::write(etc.join("hosts"), &hosts_file).expect("/etc/netns/<name>/hosts");
        }
        network.hosts = hosts;
        network
    }

    /// Drop all traffic between host `i` and the other hosts, both ways;
    /// the machine still reaches every host.
    pub fn cut(&self, i: usize) {
        self.blackholes(i, "add");
    }

    /// Undo [`cut`](Self::cut).
    pub fn heal(&self, i: usize) {
        self.blackholes(i, "del");
    }

    fn blackholes(&self, i: usize, verb: &str) {
        let cut = &self.hosts[i];
        for other in self.hosts.iter().filter(|h| h.name != cut.name) {
            for (from, to) in [(cut, other), (other, cut)] {
                ip(&["-n", &from.name, "route", verb, "blackhole", &format!("{}/32", to.ip)]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove(&self.tag);
        let _ = std::fs::remove_file(registry().join(format!("{}-{}", std::process::id(), self.tag)));
    }
}
