//! Dropping duplicates by `_unique_id`: a bounded window of recent ids.

use std::collections::{HashSet, VecDeque};

/// An id as kept: the 128 bits of a 32-hex-digit id (what oslo and nova-rs
/// send, a UUID's hex), so keeping one allocates nothing; any other id as
/// its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Id {
    Hex(u128),
    Text(Box<str>),
}

impl Id {
    pub(crate) fn of(id: &str) -> Self {
        match id.as_bytes().try_into() {
            Ok(hex) => Self::hex(hex).unwrap_or_else(|| Self::Text(id.into())),
            Err(_) => Self::Text(id.into()),
        }
    }

    /// 32 lower-case hex digits as their 128 bits; `None` for anything else.
    fn hex(digits: &[u8; 32]) -> Option<Self> {
        const fn digit_values() -> [u8; 256] {
            let mut table = [0xff; 256];
            let mut i = 0;
            while i < 16 {
                table[b"0123456789abcdef"[i] as usize] = i as u8;
                i += 1;
            }
            table
        }
        const DIGITS: [u8; 256] = digit_values();
        // Every digit looked up, no early exit: the loop stays branch-free.
        let (mut bits, mut bad) = (0u128, 0u8);
        for &b in digits {
            let d = DIGITS[usize::from(b)];
            bad |= d;
            bits = bits << 4 | u128::from(d & 0xf);
        }
        (bad & 0xf0 == 0).then_some(Self::Hex(bits))
    }
}

/// The last `capacity` ids seen. The ids come from the network, so the
/// set's hash is seeded per process (foldhash's quality hasher: a fraction
/// of SipHash's cost, and no collisions a sender can plan).
#[derive(Debug)]
pub struct SeenIds {
    set: HashSet<Id, foldhash::quality::RandomState>,
    order: VecDeque<Id>,
    capacity: usize,
}

impl SeenIds {
    /// A window of `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            set: HashSet::with_capacity_and_hasher(capacity + 1, foldhash::quality::RandomState::default()),
            order: VecDeque::with_capacity(capacity + 1),
            capacity,
        }
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&Id::of(id))
    }

    /// Record `id`; `false` when it was already in the window.
    pub fn insert(&mut self, id: &str) -> bool {
        let id = Id::of(id);
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
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
