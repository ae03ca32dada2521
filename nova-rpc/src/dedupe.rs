//! Dropping duplicates by `_unique_id`: a bounded window of recent ids.

use std::collections::{HashSet, VecDeque};

/// The last `capacity` ids seen.
#[derive(Debug)]
pub struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl SeenIds {
    /// A window of `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Record `id`; `false` when it was already in the window.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}
