//! A bounded cache shared by the FUSE server's threads, for decompressed metadata blocks,
//! data blocks and file block maps.
//!
//! - Bounded by bytes: memory follows the cache size, never the image size.
//! - One load per key: a thread that asks for a block another thread is decompressing
//!   waits for that result instead of decompressing it again (the page faults of one
//!   `execve` ask the same 128 KiB block 32 times, from several threads).
//! - Second-chance FIFO eviction: a block used since it was cached gets one more round,
//!   so the root's and `/usr/lib`'s metadata stay while a `tar` streams through.
//! - Sharded by key, so threads rarely wait on each other's lock.
//!
//! An error is never cached: the next reader tries again (and reports it again).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const SHARDS: usize = 8;

type Loaded<V> = Result<V, (io::ErrorKind, String)>;

struct Slot<V> {
    value: OnceLock<Loaded<V>>,
    used: AtomicBool,
}

struct Shard<V> {
    map: HashMap<u64, Arc<Slot<V>>>,
    order: VecDeque<(u64, usize)>,
    bytes: usize,
}

pub struct Cache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

impl<V: Clone> Cache<V> {
    /// A cache that holds about `bytes` in all (as the loads report their sizes).
    pub fn new(bytes: usize) -> Cache<V> {
        let shards =
            (0..SHARDS).map(|_| Mutex::new(Shard { map: HashMap::new(), order: VecDeque::new(), bytes: 0 })).collect();
        Cache { shards, per_shard: (bytes / SHARDS).max(1) }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard<V>> {
        // Keys are image positions: mix the bits so neighbouring blocks spread.
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
        &self.shards[h as usize % SHARDS]
    }

    /// Whether `key` is cached or being loaded.
    pub fn contains(&self, key: u64) -> bool {
        self.shard(key).lock().unwrap_or_else(|e| e.into_inner()).map.contains_key(&key)
    }

    /// The value for `key`, loading it with `load` (which also says how many bytes it
    /// holds) if no thread has it yet.
    pub fn get_or_load(&self, key: u64, load: impl FnOnce() -> io::Result<(V, usize)>) -> io::Result<V> {
        let shard = self.shard(key);
        let (slot, fresh) = {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            match s.map.get(&key) {
                Some(slot) => {
                    slot.used.store(true, Ordering::Relaxed);
                    (slot.clone(), false)
                }
                None => {
                    let slot = Arc::new(Slot { value: OnceLock::new(), used: AtomicBool::new(false) });
                    s.map.insert(key, slot.clone());
                    (slot, true)
                }
            }
        };
        let mut size = 0;
        let loaded = slot.value.get_or_init(|| match load() {
            Ok((v, n)) => {
                size = n;
                Ok(v)
            }
            Err(e) => Err((e.kind(), e.to_string())),
        });
        match loaded {
            Ok(v) => {
                let v = v.clone();
                if fresh {
                    self.account(shard, key, size);
                }
                Ok(v)
            }
            Err((kind, msg)) => {
                let err = io::Error::new(*kind, msg.clone());
                let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
                if s.map.get(&key).is_some_and(|cur| Arc::ptr_eq(cur, &slot)) {
                    s.map.remove(&key);
                }
                Err(err)
            }
        }
    }

    /// Records a new entry's size and evicts until the shard is within its share.
    fn account(&self, shard: &Mutex<Shard<V>>, key: u64, size: usize) {
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        if !s.map.contains_key(&key) {
            return;
        }
        s.order.push_back((key, size));
        s.bytes += size;
        // Each entry gets at most one second chance per pass, so this ends.
        let mut budget = s.order.len() * 2;
        while s.bytes > self.per_shard && budget > 0 {
            budget -= 1;
            let Some((old, n)) = s.order.pop_front() else { break };
            if old == key {
                // Everything older is gone or got its second chance: keep the new one.
                s.order.push_back((old, n));
                break;
            }
            if s.map.get(&old).is_some_and(|slot| slot.used.swap(false, Ordering::Relaxed)) {
                s.order.push_back((old, n));
                continue;
            }
            s.map.remove(&old);
            s.bytes -= n;
        }
    }

    /// Bytes held, as the loads reported them.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_and_stays_within_its_size() {
        let cache: Cache<Arc<Vec<u8>>> = Cache::new(8 * 1024);
        let mut loads = 0;
        for round in 0..3 {
            for key in 0..64u64 {
                let v = cache
                    .get_or_load(key * 4096, || {
                        loads += 1;
                        Ok((Arc::new(vec![key as u8; 512]), 512))
                    })
                    .unwrap();
                assert_eq!(v[0], key as u8, "round {round}");
            }
        }
        assert!(cache.bytes() <= 8 * 1024 + SHARDS * 512, "{}", cache.bytes());
        assert!(loads >= 64);
    }

    #[test]
    fn errors_are_not_cached() {
        let cache: Cache<u32> = Cache::new(1024);
        let e = cache.get_or_load(1, || Err(io::Error::other("bad block"))).unwrap_err();
        assert!(e.to_string().contains("bad block"));
        assert_eq!(cache.get_or_load(1, || Ok((7, 4))).unwrap(), 7);
        assert_eq!(cache.get_or_load(1, || Ok((8, 4))).unwrap(), 7);
    }
}
