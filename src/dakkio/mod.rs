//! What belongs to dakkio's API rather than to the gateway: the ingest wire
//! bodies and their validation ([`validate`]), the documented error texts
//! ([`messages`]) and the key types and prefixes ([`keys`]).
//! Reconstructed from dakkio's public docs (`dakkio-api.md`); where they are
//! silent, the choice made is marked where it is made.
//!
//! Used by the local API (which serves dakkio's API), the uplink (which
//! talks to it) and the test stand-in in `testkit/` (which imitates it), so
//! the three cannot drift apart. Pure: no I/O, nothing above
//! [`crate::reading`] imported.

pub mod keys;
pub mod messages;
pub mod validate;

pub use keys::{well_formed, KeyType, ADMIN_KEY_PREFIX, READ_KEY_PREFIX, WRITE_KEY_PREFIX};
pub use validate::{parse_reading_id, Issue, Rejection, MAX_BATCH_POINTS};
