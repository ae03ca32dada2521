//! Connections per client address, for the HTTP endpoints a service opens
//! (the gateway, `--metrics-listen`): one client cannot take every
//! connection, so trickling or idle sockets from one address leave room
//! for everyone else.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// The open connections of each client address; clones share the count.
///
/// ```
/// let clients = nova_core::connections::PerClient::new(2);
/// let ip = "192.0.2.7".parse().unwrap();
/// let (a, b) = (clients.admit(ip), clients.admit(ip));
/// assert!(a.is_some() && b.is_some() && clients.admit(ip).is_none());
/// drop(a);
/// assert!(clients.admit(ip).is_some(), "a closed connection frees its place");
/// ```
#[derive(Debug, Clone)]
pub struct PerClient {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One open connection of a client; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    clients: PerClient,
    ip: IpAddr,
}

impl PerClient {
    /// At most `max` connections per address (at least one).
    pub fn new(max: usize) -> Self {
        Self { open: Arc::default(), max: max.max(1) }
    }

    /// A place for one more connection of `ip`, unless it holds its share already.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Admitted { clients: self.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
