//! Ids that must not be guessed: `_msg_id`, `_unique_id`, reply queue
//! names and request ids, from the operating system's generator.

/// A random UUID 4 from the operating system's generator: ids that matter
/// (`_msg_id`, `_unique_id`, reply queues, request ids) must not be
/// predictable, so they come from `getrandom`, read 4 KiB at a time per
/// thread (one system call for 256 ids; each byte is used once), not from
/// a seeded generator whose state an observer could recover.
pub(crate) fn random_uuid() -> uuid::Uuid {
    const POOL: usize = 4096;
    thread_local! {
        static BYTES: std::cell::RefCell<(Box<[u8; POOL]>, usize)> = std::cell::RefCell::new((Box::new([0; POOL]), POOL));
    }
    let mut id = [0u8; 16];
    BYTES.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used + id.len() > POOL {
            if let Err(e) = getrandom::fill(&mut bytes[..]) {
                // Linux's getrandom(2) does not fail once booted; should it,
                // an id from a seeded generator beats no call at all.
                tracing::error!(error = %e, "the operating system's random generator failed");
                bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
            }
            *used = 0;
        }
        id.copy_from_slice(&bytes[*used..*used + 16]);
        *used += 16;
    });
    uuid::Builder::from_random_bytes(id).into_uuid()
}

/// A new 32-hex-digit id (a random UUID 4), as oslo makes `_msg_id` and
/// `_unique_id`.
pub fn new_id() -> String {
    NewId::new().as_str().to_owned()
}

/// A new id kept on the stack, with its 128 bits: what a call needs for
/// its `_msg_id` and `_unique_id` without allocating either.
pub(crate) struct NewId {
    bits: u128,
    text: [u8; 32],
}

impl NewId {
    pub(crate) fn new() -> Self {
        let bits = random_uuid().as_u128();
        // The 32 lower-case hex digits, as `simple()` writes them.
        Self { bits, text: crate::dedupe::hex::encode(bits) }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The id as a set of ids keeps it ([`crate::dedupe::Id::of`] of its text).
    pub(crate) fn id(&self) -> crate::dedupe::Id {
        crate::dedupe::Id::Hex(self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_its_bits_in_hex() {
        let id = NewId::new();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(crate::dedupe::Id::of(id.as_str()), id.id());
        assert_ne!(NewId::new().as_str(), id.as_str());
    }
}
