//! Shared test helpers: a directory, store openers, and a commit step like the node's.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub mod cases;

use chat_relay::{ChatStore, Directory, FjallStore, IdGen, Limits, RedbStore, Relay, WriteBatch};

pub const T0: u64 = 1_750_000_000_000;

#[derive(Default, Clone)]
pub struct Dir {
    pub friends: HashSet<(String, String)>,
    pub groups: HashMap<String, Vec<String>>,
}

impl Dir {
    pub fn new(friends: &[(&str, &str)], groups: &[(&str, &[&str])]) -> Self {
        let mut d = Dir::default();
        for (a, b) in friends {
            d.friends.insert((a.to_string(), b.to_string()));
            d.friends.insert((b.to_string(), a.to_string()));
        }
        for (g, ms) in groups {
            d.groups
                .insert(g.to_string(), ms.iter().map(|m| m.to_string()).collect());
        }
        d
    }
}

impl Directory for Dir {
    fn are_friends(&self, a: &str, b: &str) -> bool {
        self.friends.contains(&(a.to_owned(), b.to_owned()))
    }
    fn group_members(&self, gid: &str) -> Option<Vec<String>> {
        self.groups.get(gid).cloned()
    }
}

pub type Opener = fn(&Path) -> Arc<dyn ChatStore>;

pub fn open_redb(p: &Path) -> Arc<dyn ChatStore> {
    Arc::new(RedbStore::open(p).unwrap())
}

pub fn open_fjall(p: &Path) -> Arc<dyn ChatStore> {
    Arc::new(FjallStore::open(p).unwrap())
}

pub fn relay(store: &Arc<dyn ChatStore>) -> Relay {
    relay_with(store, Limits::default())
}

pub fn relay_with(store: &Arc<dyn ChatStore>, limits: Limits) -> Relay {
    Relay::new(store.clone(), IdGen::new(1).unwrap(), limits).unwrap()
}

/// What the node's committer does: take, commit durably, confirm.
pub fn commit(r: &mut Relay) -> Option<WriteBatch> {
    let b = r.take_batch()?;
    r.store().commit(&b).unwrap();
    r.committed(b.id);
    Some(b)
}

/// Runs a test body over both stores.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod redb_store {
            $( #[test] fn $name() { super::$name(super::common::open_redb) } )*
        }
        mod fjall_store {
            $( #[test] fn $name() { super::$name(super::common::open_fjall) } )*
        }
    };
}
