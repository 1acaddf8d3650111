//! Keys and scopes of the local API, exactly dakkio's (dakkio-api.md §3):
//! one admin key (`dakkio_a_…`, configured as a hash) and write/read keys
//! (`dakkio_w_…`/`dakkio_r_…`) issued here for one bucket each.
//!
//! - A presented key is hashed (SHA-256) and looked up by hash; the hash
//!   found is compared again in constant time, and the admin hash always in
//!   constant time. No plaintext key is kept anywhere, in memory or on disk.
//! - The table is in memory and updated on create/delete, so a deleted key
//!   is refused on the very next request.
//! - `lastUsedAt` is recorded in memory and written in batches
//!   ([`KeyTable::take_dirty`]), never one write per request.
//! - Failed authentications are counted per client address in a bounded
//!   map ([`Throttle`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rand::Rng;
use subtle::ConstantTimeEq;

use crate::config::key_sha256;
pub use crate::dakkio::well_formed;
use crate::dakkio::KeyType;
use crate::store::ApiKeyRow;

/// Random characters after the prefix of an issued key (base62: ≈ 238 bits).
pub const KEY_TAIL_LEN: usize = 40;
/// Characters of a key shown in lists (`dakkio_w_` + 4), then `...`.
pub const PREFIX_LEN: usize = 13;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Write,
    Read,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Write => "write",
            KeyKind::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "write" => Some(KeyKind::Write),
            "read" => Some(KeyKind::Read),
            _ => None,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Write => KeyType::Write.prefix(),
            KeyKind::Read => KeyType::Read.prefix(),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Bucket {
        key_id: String,
        bucket_id: String,
        kind: KeyKind,
    },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    pub fn can_write(&self) -> bool {
        matches!(
            self,
            Principal::Admin
                | Principal::Bucket {
                    kind: KeyKind::Write,
                    ..
                }
        )
    }

    /// Admin keys reach every bucket; write/read keys only their own.
    pub fn has_bucket(&self, bucket: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Bucket { bucket_id, .. } => bucket_id == bucket,
        }
    }
}

/// A fresh key of `kind`: prefix + `KEY_TAIL_LEN` base62 characters from
/// the thread's CSPRNG (ChaCha, seeded from the OS).
pub fn generate_key(kind: KeyKind) -> String {
    let mut rng = rand::rng();
    let mut key = String::with_capacity(9 + KEY_TAIL_LEN);
    key.push_str(kind.prefix());
    for _ in 0..KEY_TAIL_LEN {
        key.push(BASE62[rng.random_range(0..BASE62.len())] as char);
    }
    key
}

/// An issued key as the API knows it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub bucket_id: String,
    pub kind: KeyKind,
    pub name: String,
    pub hash: [u8; 32],
    /// The first [`PREFIX_LEN`] characters.
    pub prefix: String,
    pub created_at: i64,
    /// Unix ms, 0 when never used.
    last_used: AtomicI64,
    dirty: AtomicBool,
}

impl KeyEntry {
    pub fn from_row(row: &ApiKeyRow) -> Option<KeyEntry> {
        Some(KeyEntry {
            id: row.id.clone(),
            bucket_id: row.bucket_id.clone(),
            kind: KeyKind::parse(&row.kind)?,
            name: row.name.clone(),
            hash: row.hash,
            prefix: row.prefix.clone(),
            created_at: row.created_at,
            last_used: AtomicI64::new(row.last_used_at.unwrap_or(0)),
            dirty: AtomicBool::new(false),
        })
    }

    pub fn to_row(&self) -> ApiKeyRow {
        ApiKeyRow {
            id: self.id.clone(),
            bucket_id: self.bucket_id.clone(),
            kind: self.kind.as_str().to_owned(),
            name: self.name.clone(),
            hash: self.hash,
            prefix: self.prefix.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at(),
        }
    }

    /// A new entry for a key just generated (the plaintext is hashed here
    /// and not kept).
    pub fn issue(
        id: String,
        bucket_id: String,
        kind: KeyKind,
        name: String,
        key: &str,
        now: i64,
    ) -> KeyEntry {
        KeyEntry {
            id,
            bucket_id,
            kind,
            name,
            hash: key_sha256(key),
            prefix: key.chars().take(PREFIX_LEN).collect(),
            created_at: now,
            last_used: AtomicI64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    pub fn last_used_at(&self) -> Option<i64> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// The admin key's hash, shared with the supervisor so that a configuration
/// reload changes it for the very next request without rebinding.
#[derive(Debug, Clone, Default)]
pub struct AdminSlot(Arc<RwLock<Option<[u8; 32]>>>);

impl AdminSlot {
    pub fn new(hash: Option<[u8; 32]>) -> AdminSlot {
        AdminSlot(Arc::new(RwLock::new(hash)))
    }

    /// Replace the admin key's hash (`None`: admin endpoints answer 401).
    pub fn set(&self, hash: Option<[u8; 32]>) {
        *self.0.write().expect("admin slot") = hash;
    }

    fn get(&self) -> Option<[u8; 32]> {
        *self.0.read().expect("admin slot")
    }
}

/// The issued keys by hash, plus the admin key's hash.
pub struct KeyTable {
    admin: AdminSlot,
    keys: RwLock<HashMap<[u8; 32], Arc<KeyEntry>>>,
}

impl KeyTable {
    #[cfg(test)]
    pub fn new(admin: Option<[u8; 32]>, entries: Vec<KeyEntry>) -> KeyTable {
        Self::with_admin_slot(AdminSlot::new(admin), entries)
    }

    /// Like [`KeyTable::new`], with an admin hash the caller can change later.
    pub fn with_admin_slot(admin: AdminSlot, entries: Vec<KeyEntry>) -> KeyTable {
        KeyTable {
            admin,
            keys: RwLock::new(entries.into_iter().map(|e| (e.hash, Arc::new(e))).collect()),
        }
    }

    /// The caller behind `key`, recording the use. `None` for anything that
    /// is not a current key.
    pub fn authenticate(&self, key: &str, now: i64) -> Option<Principal> {
        if !well_formed(key) {
            return None;
        }
        let hash = key_sha256(key);
        if KeyType::of(key) == Some(KeyType::Admin) {
            let admin = self.admin.get()?;
            return bool::from(admin.ct_eq(&hash)).then_some(Principal::Admin);
        }
        let entry = self.keys.read().expect("key table").get(&hash).cloned()?;
        if !bool::from(entry.hash.ct_eq(&hash)) {
            return None;
        }
        // A write key is `dakkio_w_…`: the presented prefix must match the type.
        if !key.starts_with(entry.kind.prefix()) {
            return None;
        }
        entry.last_used.store(now, Ordering::Relaxed);
        entry.dirty.store(true, Ordering::Relaxed);
        Some(Principal::Bucket {
            key_id: entry.id.clone(),
            bucket_id: entry.bucket_id.clone(),
            kind: entry.kind,
        })
    }

    pub fn insert(&self, entry: KeyEntry) {
        self.keys
            .write()
            .expect("key table")
            .insert(entry.hash, Arc::new(entry));
    }

    /// Remove a key of `bucket_id` by id; the removed entry, if any.
    pub fn remove(&self, bucket_id: &str, id: &str) -> Option<Arc<KeyEntry>> {
        let mut keys = self.keys.write().expect("key table");
        let hash = keys
            .values()
            .find(|e| e.id == id && e.bucket_id == bucket_id)
            .map(|e| e.hash)?;
        keys.remove(&hash)
    }

    /// A bucket's keys, oldest first.
    pub fn list(&self, bucket_id: &str) -> Vec<Arc<KeyEntry>> {
        let mut out: Vec<Arc<KeyEntry>> = self
            .keys
            .read()
            .expect("key table")
            .values()
            .filter(|e| e.bucket_id == bucket_id)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    pub fn count(&self) -> usize {
        self.keys.read().expect("key table").len()
    }

    /// `(id, lastUsedAt)` of keys used since the last call.
    pub fn take_dirty(&self) -> Vec<(String, i64)> {
        self.keys
            .read()
            .expect("key table")
            .values()
            .filter(|e| e.dirty.swap(false, Ordering::Relaxed))
            .map(|e| (e.id.clone(), e.last_used.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn has_admin(&self) -> bool {
        self.admin.get().is_some()
    }
}

/// Failed authentications per client address within a one-minute window.
/// At most `capacity` addresses are tracked: expired windows are evicted
/// first, then the oldest window, so memory stays bounded under a flood of
/// addresses (the worst case forgets an attacker early, never grows).
pub struct Throttle {
    limit: u32,
    capacity: usize,
    window_ms: i64,
    clients: HashMap<IpAddr, (i64, u32)>,
}

impl Throttle {
    pub fn new(limit: u32, capacity: usize) -> Throttle {
        Throttle {
            limit,
            capacity,
            window_ms: 60_000,
            clients: HashMap::new(),
        }
    }

    /// When `ip` is throttled: the window's end (Unix ms).
    pub fn blocked_until(&self, ip: IpAddr, now: i64) -> Option<i64> {
        let (start, n) = self.clients.get(&ip)?;
        let end = start + self.window_ms;
        (now < end && *n >= self.limit).then_some(end)
    }

    pub fn record_failure(&mut self, ip: IpAddr, now: i64) {
        let window = self.window_ms;
        if !self.clients.contains_key(&ip) && self.clients.len() >= self.capacity {
            self.clients.retain(|_, (start, _)| now < *start + window);
            if self.clients.len() >= self.capacity {
                if let Some(oldest) = self
                    .clients
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(ip, _)| *ip)
                {
                    self.clients.remove(&oldest);
                }
            }
        }
        let e = self.clients.entry(ip).or_insert((now, 0));
        if now >= e.0 + window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_dakkio_shape_and_differ() {
        let a = generate_key(KeyKind::Write);
        let b = generate_key(KeyKind::Write);
        assert!(a.starts_with("dakkio_w_"));
        assert_eq!(a.len(), 9 + KEY_TAIL_LEN);
        assert!(well_formed(&a));
        assert_ne!(a, b);
        assert!(generate_key(KeyKind::Read).starts_with("dakkio_r_"));
        assert!(!well_formed("dakkio_w_"));
        assert!(!well_formed("dakkio_x_abc"));
        assert!(!well_formed("dakkio_w_abc-def"));
    }

    #[test]
    fn table_authenticates_by_hash_and_forgets_deleted_keys() {
        let admin = "dakkio_a_admin0123456789";
        let t = KeyTable::new(Some(key_sha256(admin)), Vec::new());
        assert_eq!(t.authenticate(admin, 1), Some(Principal::Admin));
        assert_eq!(t.authenticate("dakkio_a_other", 1), None);
        let key = generate_key(KeyKind::Read);
        t.insert(KeyEntry::issue(
            "k1".into(),
            "b1".into(),
            KeyKind::Read,
            "n".into(),
            &key,
            5,
        ));
        let p = t.authenticate(&key, 7).unwrap();
        assert!(!p.can_write() && p.has_bucket("b1") && !p.has_bucket("b2"));
        // The same tail with another type's prefix is another key.
        assert_eq!(
            t.authenticate(&key.replacen("dakkio_r_", "dakkio_w_", 1), 7),
            None
        );
        assert_eq!(t.take_dirty(), vec![("k1".to_owned(), 7)]);
        assert!(t.take_dirty().is_empty());
        assert_eq!(t.list("b1")[0].prefix, &key[..PREFIX_LEN]);
        assert!(t.remove("b2", "k1").is_none());
        assert!(t.remove("b1", "k1").is_some());
        assert_eq!(t.authenticate(&key, 8), None);
    }

    #[test]
    fn throttle_blocks_after_limit_and_stays_bounded() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut t = Throttle::new(3, 16);
        for _ in 0..2 {
            t.record_failure(ip, 1000);
        }
        assert_eq!(t.blocked_until(ip, 1000), None);
        t.record_failure(ip, 1000);
        assert_eq!(t.blocked_until(ip, 2000), Some(61_000));
        assert_eq!(t.blocked_until(ip, 61_000), None);
        for i in 0..10_000u32 {
            t.record_failure(IpAddr::from(i.to_be_bytes()), 2000 + i as i64);
        }
        assert!(t.tracked() <= 16);
    }
}
