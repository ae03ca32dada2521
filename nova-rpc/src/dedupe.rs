//! Dropping duplicates by `_unique_id`: a bounded window of recent ids.

use std::collections::{HashSet, VecDeque};

/// An id as kept: the 128 bits of a 32-hex-digit id (what oslo and nova-rs
/// send, a UUID's hex), so keeping one allocates nothing; any other id as
/// its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    Hex(u128),
    Text(Box<str>),
}

impl Id {
    fn of(id: &str) -> Self {
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let bits = (id.len() == 32)
            .then(|| id.bytes().try_fold(0u128, |bits, b| Some(bits << 4 | u128::from(hex(b)?))))
            .flatten();
        bits.map_or_else(|| Self::Text(id.into()), Self::Hex)
    }
}

/// The last `capacity` ids seen.
#[derive(Debug)]
pub struct SeenIds {
    set: HashSet<Id>,
    order: VecDeque<Id>,
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
        self.set.contains(&Id::of(id))
    }

    /// Record `id`; `false` when it was already in the window.
    pub fn insert(&mut self, id: &str) -> bool {
        let id = Id::of(id);
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::SeenIds;

    #[test]
    fn the_window_forgets_the_oldest_and_tells_ids_apart_by_their_text() {
        let mut seen = SeenIds::new(2);
        let (a, b, c) = ("0123456789abcdef0123456789abcdef", "not-a-uuid", "fedcba9876543210fedcba9876543210");
        assert!(seen.insert(a) && seen.insert(b));
        assert!(!seen.insert(a) && !seen.insert(b), "duplicates are refused");
        // Upper case hex is another text, not the same id.
        assert!(!seen.contains(&a.to_uppercase()));
        assert!(seen.insert(c));
        assert!(!seen.contains(a), "the oldest went");
        assert!(seen.contains(b) && seen.contains(c));
    }
}
