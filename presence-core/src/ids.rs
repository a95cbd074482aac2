//! The only place the app's user ids exist: an interner from id strings to dense `u32` ids,
//! assigned in insertion order. Dense ids are what keep bitmaps, per-user tables and the
//! fan-out compact.
//!
//! Names live in one arena string with an end offset per id, and the hash table holds only the
//! `u32` ids (hashing looks the name up in the arena), so an interned id costs its bytes plus
//! about 13 bytes, not a `String` and a map entry.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::error::Error;

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// A dense internal user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u32);

impl UserId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Maps app user ids (strings of 1 to 128 bytes) to dense ids and back.
#[derive(Default)]
pub struct Interner {
    arena: String,
    ends: Vec<u64>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.len())
            .finish()
    }
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of interned ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Checks that `name` is a valid user id.
    pub fn check(name: &str) -> Result<(), Error> {
        if name.is_empty() || name.len() > MAX_USER_ID_LEN {
            return Err(Error::InvalidUserId {
                len: name.len(),
                max: MAX_USER_ID_LEN,
            });
        }
        Ok(())
    }

    fn name_at<'a>(arena: &'a str, ends: &[u64], id: u32) -> &'a str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
        &arena[start..ends[i] as usize]
    }

    /// The dense id of `name`, if interned.
    pub fn get(&self, name: &str) -> Option<UserId> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&id| {
                Self::name_at(&self.arena, &self.ends, id) == name
            })
            .map(|&id| UserId(id))
    }

    /// The dense id of `name`, interning it if new. Returns the id and whether it was new.
    pub fn intern(&mut self, name: &str) -> Result<(UserId, bool), Error> {
        Self::check(name)?;
        let hash = self.hasher.hash_one(name);
        let (arena, ends) = (&self.arena, &self.ends);
        if let Some(&id) = self
            .table
            .find(hash, |&id| Self::name_at(arena, ends, id) == name)
        {
            return Ok((UserId(id), false));
        }
        let id = u32::try_from(self.ends.len()).map_err(|_| Error::TooManyUsers)?;
        if id == u32::MAX {
            return Err(Error::TooManyUsers);
        }
        self.arena.push_str(name);
        self.ends.push(self.arena.len() as u64);
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        self.table.insert_unique(hash, id, |&other| {
            hasher.hash_one(Self::name_at(arena, ends, other))
        });
        Ok((UserId(id), true))
    }

    /// The app's id for a dense id.
    pub fn name(&self, id: UserId) -> Option<&str> {
        (id.index() < self.ends.len()).then(|| Self::name_at(&self.arena, &self.ends, id.0))
    }

    /// Bytes of heap this interner holds (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * 8
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    /// Reserves room for `additional` more ids of about `avg_len` bytes each.
    pub fn reserve(&mut self, additional: usize, avg_len: usize) {
        self.arena.reserve(additional * avg_len);
        self.ends.reserve(additional);
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        self.table.reserve(additional, |&other| {
            hasher.hash_one(Self::name_at(arena, ends, other))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_densely_in_insertion_order() {
        let mut i = Interner::new();
        assert_eq!(i.intern("alice").unwrap(), (UserId(0), true));
        assert_eq!(i.intern("bob").unwrap(), (UserId(1), true));
        assert_eq!(i.intern("alice").unwrap(), (UserId(0), false));
        assert_eq!(i.get("bob"), Some(UserId(1)));
        assert_eq!(i.get("carol"), None);
        assert_eq!(i.name(UserId(1)), Some("bob"));
        assert_eq!(i.name(UserId(2)), None);
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn rejects_empty_and_oversize_ids_without_change() {
        let mut i = Interner::new();
        assert!(matches!(
            i.intern(""),
            Err(Error::InvalidUserId { len: 0, .. })
        ));
        let long = "x".repeat(129);
        assert!(matches!(
            i.intern(&long),
            Err(Error::InvalidUserId { len: 129, .. })
        ));
        assert!(i.intern(&"y".repeat(128)).is_ok());
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn survives_growth() {
        let mut i = Interner::new();
        for n in 0..10_000 {
            assert_eq!(i.intern(&format!("user-{n}")).unwrap().0, UserId(n));
        }
        for n in 0..10_000 {
            assert_eq!(i.get(&format!("user-{n}")), Some(UserId(n)));
        }
    }
}
