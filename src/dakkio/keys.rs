//! dakkio's API keys (dakkio-api.md §3): three types told apart by their
//! prefix, a random alphanumeric tail. An admin key (`dakkio_a_…`) reaches the
//! whole organisation; write (`dakkio_w_…`) and read (`dakkio_r_…`) keys one
//! bucket each. Only the shape is known here, never a key: nothing in this
//! file stores or prints one.

/// Prefix of an admin (organisation) key.
pub const ADMIN_KEY_PREFIX: &str = "dakkio_a_";
/// Prefix of a bucket write key.
pub const WRITE_KEY_PREFIX: &str = "dakkio_w_";
/// Prefix of a bucket read key.
pub const READ_KEY_PREFIX: &str = "dakkio_r_";

/// Longest tail accepted after the prefix (dakkio's own are 40 or so).
pub const MAX_TAIL_LEN: usize = 256;

/// The three key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Admin,
    Write,
    Read,
}

impl KeyType {
    pub const fn prefix(self) -> &'static str {
        match self {
            KeyType::Admin => ADMIN_KEY_PREFIX,
            KeyType::Write => WRITE_KEY_PREFIX,
            KeyType::Read => READ_KEY_PREFIX,
        }
    }

    /// The type a key's prefix claims, whatever follows it.
    pub fn of(key: &str) -> Option<KeyType> {
        [KeyType::Admin, KeyType::Write, KeyType::Read]
            .into_iter()
            .find(|t| key.starts_with(t.prefix()))
    }
}

/// `dakkio_[awr]_` followed by 1 to [`MAX_TAIL_LEN`] letters and digits;
/// anything else is refused without a lookup.
pub fn well_formed(key: &str) -> bool {
    let tail = KeyType::of(key).and_then(|t| key.strip_prefix(t.prefix()));
    tail.is_some_and(|t| {
        !t.is_empty() && t.len() <= MAX_TAIL_LEN && t.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_names_the_type() {
        assert_eq!(KeyType::of("dakkio_a_x"), Some(KeyType::Admin));
        assert_eq!(KeyType::of("dakkio_w_x"), Some(KeyType::Write));
        assert_eq!(KeyType::of("dakkio_r_x"), Some(KeyType::Read));
        assert_eq!(KeyType::of("dakkio_x"), None);
        assert_eq!(KeyType::of("DAKKIO_W_x"), None);
    }

    #[test]
    fn well_formed_keys() {
        assert!(well_formed("dakkio_w_abc123"));
        assert!(!well_formed("dakkio_w_"));
        assert!(!well_formed("dakkio_w_abc-def"));
        assert!(!well_formed("dakkio_abc123"));
        assert!(well_formed(&format!(
            "dakkio_r_{}",
            "a".repeat(MAX_TAIL_LEN)
        )));
        assert!(!well_formed(&format!(
            "dakkio_r_{}",
            "a".repeat(MAX_TAIL_LEN + 1)
        )));
    }
}
