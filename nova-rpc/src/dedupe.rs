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
        hex::decode(digits).map(Self::Hex)
    }
}

/// 128 bits as 32 lower-case hex digits and back, eight digits at a time
/// in a `u64` (a lookup per digit was a measurable share of a call, which
/// makes two ids and reads four).
pub(crate) mod hex {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;

    /// The digits of `bits`, most significant first.
    pub(crate) fn encode(bits: u128) -> [u8; 32] {
        let mut text = [0u8; 32];
        for (i, chunk) in text.chunks_exact_mut(8).enumerate() {
            let part = (bits >> (96 - 32 * i)) as u32;
            chunk.copy_from_slice(&digits(part).to_le_bytes());
        }
        text
    }

    /// Eight digits for `x`, the first in the lowest byte.
    fn digits(x: u32) -> u64 {
        // One nibble per byte, the lowest nibble in the lowest byte…
        let mut v = u64::from(x);
        v = (v | v << 16) & 0x0000_ffff_0000_ffff;
        v = (v | v << 8) & 0x00ff_00ff_00ff_00ff;
        v = (v | v << 4) & LOW_NIBBLES;
        // …then the most significant first, as text reads.
        let v = v.swap_bytes();
        // Lanes of 10 or more carry into bit 4 when 6 is added: letters.
        let letters = ((v + ONES * 6) >> 4) & ONES;
        v + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10)
    }

    /// The 128 bits of 32 lower-case hex digits; `None` for anything else.
    pub(crate) fn decode(text: &[u8; 32]) -> Option<u128> {
        let mut bits = 0u128;
        for chunk in text.chunks_exact(8) {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            bits = bits << 32 | u128::from(value(word)?);
        }
        Some(bits)
    }

    /// Lanes at least `k` (for lanes below 0x80, where a lane plus
    /// `0x80 - k` cannot carry into the next).
    fn at_least(v: u64, k: u8) -> u64 {
        (v + ONES * u64::from(0x80 - k)) & TOPS
    }

    /// The value of eight digits, the first in the lowest byte.
    fn value(v: u64) -> Option<u32> {
        if v & TOPS != 0 {
            return None;
        }
        let digit = at_least(v, b'0') & !at_least(v, b'9' + 1);
        let letter = at_least(v, b'a') & !at_least(v, b'f' + 1);
        if digit | letter != TOPS {
            return None;
        }
        // `a`–`f` are 1–6 in their low nibble: 9 more makes them 10–15.
        let v = (v & LOW_NIBBLES) + (letter >> 7) * 9;
        // The first digit is the most significant: gather from the other end.
        let mut v = v.swap_bytes();
        v = (v | v >> 4) & 0x00ff_00ff_00ff_00ff;
        v = (v | v >> 8) & 0x0000_ffff_0000_ffff;
        v = (v | v >> 16) & 0xffff_ffff;
        Some(v as u32)
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
    use super::{hex, SeenIds};

    #[test]
    fn hex_digits_eight_at_a_time_are_what_a_digit_loop_gives() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let bits = match rng.u8(..4) {
                0 => u128::MAX >> rng.u32(..128),
                1 => rng.u128(..) & 0xa0a0_f0f0_9999_aaaa_0000_ffff_0a0a_f9f9,
                _ => rng.u128(..),
            };
            let text = hex::encode(bits);
            assert_eq!(std::str::from_utf8(&text).unwrap(), format!("{bits:032x}"));
            assert_eq!(hex::decode(&text), Some(bits));
            // One byte changed, to anything: decoded only while it is still a lower-case digit.
            let mut other = text;
            let at = rng.usize(..32);
            other[at] = rng.u8(..);
            let by_loop = other
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
                .then(|| other.iter().fold(0u128, |n, &b| n << 4 | u128::from((b as char).to_digit(16).unwrap())));
            assert_eq!(hex::decode(&other), by_loop, "{other:?}");
        }
        for edge in [b'0' - 1, b'9' + 1, b'a' - 1, b'f' + 1, b'A', b'F', 0x80, 0xb0, 0xe1, 0xff] {
            let mut text = hex::encode(0);
            text[17] = edge;
            assert_eq!(hex::decode(&text), None, "{edge:#x}");
        }
    }

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
