//! The response cache's storage: in memory, bounded in bytes, behind
//! `pingora-cache`'s `Storage` trait (its own `MemCache` is for tests only).
//!
//! - Admission and eviction by Pingora's TinyUFO (TinyLFU admission, S3-FIFO
//!   eviction), weighted by each entry's bytes: a scan of one-off answers
//!   cannot push out the popular ones, and lookups take no lock.
//! - Streaming writes: an answer being stored can be read while it arrives,
//!   so the first client is served as it streams and the readers the cache
//!   lock held back follow the same fill instead of asking the upstream.
//! - An index by route and path, for `POST /cache/purge` and for reloads
//!   that change a route's cache settings.

use crate::core::cache::route_and_path;
use crate::telemetry::cache_metrics;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, CompactCacheKey};
use pingora_cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tinyufo::TinyUfo;
use tokio::sync::watch;

mod handlers;
use handlers::{CompleteHit, FillWriter, PartialHit};

/// A key's storage slot: the cache key's combined (primary + variance) hash.
type Slot = u128;

/// route -> slot -> path: what a purge by route or path drops.
type Index = HashMap<Box<str>, HashMap<Slot, Box<str>>>;

fn slot(key: &CompactCacheKey) -> Slot {
    u128::from_be_bytes(key.combined_bin())
}

fn slot_of(key: &CacheKey) -> Slot {
    u128::from_be_bytes(key.combined_bin())
}

/// What a stored answer's `CacheMeta` is rebuilt from on each hit: cheaper
/// than Pingora's serialized form, whose head is compressed.
#[derive(Clone)]
struct Head {
    fresh_until: SystemTime,
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<[u8; 16]>,
    header: ResponseHeader,
}

impl Head {
    fn of(meta: &CacheMeta) -> Head {
        Head {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
        }
    }

    fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(v) = self.variance {
            meta.set_variance_key(v);
        }
        meta
    }

    /// Bytes the head holds, roughly: names, values, and the map's own.
    fn bytes(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() * 2 + v.len() + 32)
            .sum::<usize>()
            + 128
    }
}

/// One stored answer.
struct Stored {
    slot: Slot,
    route: Box<str>,
    path: Box<str>,
    head: RwLock<Head>,
    body: Bytes,
    /// What it counts against `max_size`.
    bytes: usize,
}

/// Where a fill stands: chunks written so far, and whether it is complete.
#[derive(Clone, Copy)]
struct Progress {
    chunks: usize,
    done: bool,
}

/// An answer being stored, readable while it arrives.
struct Fill {
    id: u64,
    slot: Slot,
    route: Box<str>,
    path: Box<str>,
    head: Head,
    chunks: Arc<RwLock<Vec<Bytes>>>,
    progress: Arc<watch::Sender<Progress>>,
}

/// The store, process-wide (Pingora wants `&'static` storage); see the module doc.
pub struct CacheStore {
    entries: TinyUfo<Slot, Arc<Stored>>,
    /// Fills in progress, by slot then write id (each writer its own).
    fills: RwLock<HashMap<Slot, Vec<Fill>>>,
    /// How many fills are in progress: lookups skip the map's lock at zero.
    filling: AtomicUsize,
    index: Mutex<Index>,
    next_write: AtomicU64,
    /// Purges so far: a request notes it when it starts, and its answer is not
    /// stored if a purge came in between (`proxy::cache::cacheable`).
    purges: AtomicU64,
    /// Bytes per unit of TinyUFO weight (a `u16`): an entry of `max_object`
    /// bytes must weigh at most `u16::MAX`.
    unit: usize,
    max_size: usize,
    max_object: usize,
    size: AtomicUsize,
}

/// What an entry costs beyond its body and head: the `Stored`, the index, the
/// TinyUFO bucket.
const ENTRY_OVERHEAD: usize = 256;

impl CacheStore {
    pub fn new(max_size: usize, max_object: usize) -> CacheStore {
        let largest = max_object + 64 * 1024;
        let unit = largest.div_ceil(u16::MAX as usize).max(1);
        // TinyUFO sizes its sketch and map by an estimate of the entries held.
        let estimated_entries = (max_size / 2048).clamp(128, 500_000);
        CacheStore {
            entries: TinyUfo::new((max_size / unit).max(1), estimated_entries),
            fills: RwLock::new(HashMap::new()),
            filling: AtomicUsize::new(0),
            index: Mutex::new(HashMap::new()),
            next_write: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            unit,
            max_size,
            max_object,
            size: AtomicUsize::new(0),
        }
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn max_object(&self) -> usize {
        self.max_object
    }

    /// Bytes held by stored entries now.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    fn set_size_metric(&self) {
        let size = i64::try_from(self.size()).unwrap_or(i64::MAX);
        cache_metrics::families().size_bytes.set(size);
    }

    fn index_lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets an entry that left the TinyUFO (evicted or removed).
    fn forget(&self, gone: &Stored) {
        self.size.fetch_sub(gone.bytes, Ordering::Relaxed);
        let mut index = self.index_lock();
        if let Some(slots) = index.get_mut(&gone.route) {
            slots.remove(&gone.slot);
            if slots.is_empty() {
                index.remove(&gone.route);
            }
        }
    }

    fn remove(&self, slot: Slot) -> bool {
        match self.entries.remove(&slot) {
            Some(gone) => {
                self.forget(&gone);
                true
            }
            None => false,
        }
    }

    /// Stores a complete answer, replacing the slot's old one; TinyUFO may
    /// evict others, or refuse this one if it is less wanted than them.
    fn admit(&self, stored: Stored) -> usize {
        let bytes = stored.bytes;
        if bytes > self.max_object + 64 * 1024 || bytes > self.max_size {
            return 0;
        }
        self.remove(stored.slot);
        let weight = u16::try_from(bytes.div_ceil(self.unit))
            .unwrap_or(u16::MAX)
            .max(1);
        let stored = Arc::new(stored);
        self.size.fetch_add(bytes, Ordering::Relaxed);
        self.index_lock()
            .entry(stored.route.clone())
            .or_default()
            .insert(stored.slot, stored.path.clone());
        let evicted = self.entries.put(stored.slot, stored.clone(), weight);
        let families = cache_metrics::families();
        for kv in evicted {
            self.forget(&kv.data);
            if !Arc::ptr_eq(&kv.data, &stored) {
                families.evictions.inc();
            }
        }
        self.set_size_metric();
        bytes
    }

    /// Purges so far (see the field).
    pub fn purges(&self) -> u64 {
        self.purges.load(Ordering::Acquire)
    }

    /// Drops a route's entries, or only those of one path (every query string,
    /// consumer and variant of it). Returns how many were dropped. Answers
    /// being fetched or stored for them are not stored afterwards: they were
    /// asked for before the purge.
    pub fn purge(&self, route: &str, path: Option<&str>) -> usize {
        self.purges.fetch_add(1, Ordering::AcqRel);
        // Held until the entries are gone: a fill ends and is stored under
        // this lock too (`FillWriter::finish`), so the purge sees each answer
        // as a fill or as an entry, never as neither.
        let mut fills = self.fills_mut();
        self.cancel_fills(&mut fills, |fill| {
            &*fill.route == route && path.is_none_or(|p| &*fill.path == p)
        });
        let slots: Vec<Slot> = {
            let index = self.index_lock();
            index.get(route).map_or_else(Vec::new, |slots| {
                slots
                    .iter()
                    .filter(|(_, p)| path.is_none_or(|path| &***p == path))
                    .map(|(s, _)| *s)
                    .collect()
            })
        };
        let purged = slots.into_iter().filter(|s| self.remove(*s)).count();
        drop(fills);
        self.set_size_metric();
        purged
    }

    /// Cancels the fills of one key: for an answer whose fill was made after
    /// a purge it was fetched across (`proxy::cache::stamp`).
    pub fn cancel_fills_of(&self, key: &CacheKey) {
        let slot = slot_of(key);
        self.cancel_fills(&mut self.fills_mut(), |fill| fill.slot == slot);
    }

    /// Forgets the fills `purged` picks: their writers then store nothing
    /// (`FillWriter::finish` finds no fill), and later lookups do not find
    /// them. Readers already streaming one keep reading it.
    fn cancel_fills(&self, fills: &mut HashMap<Slot, Vec<Fill>>, purged: impl Fn(&Fill) -> bool) {
        let mut cancelled = 0;
        fills.retain(|_, list| {
            list.retain(|fill| {
                let gone = purged(fill);
                cancelled += usize::from(gone);
                !gone
            });
            !list.is_empty()
        });
        self.filling.fetch_sub(cancelled, Ordering::Relaxed);
    }

    fn fills(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Slot, Vec<Fill>>> {
        self.fills.read().unwrap_or_else(|p| p.into_inner())
    }

    fn fills_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Slot, Vec<Fill>>> {
        self.fills.write().unwrap_or_else(|p| p.into_inner())
    }

    fn end_fill(&self, slot: Slot, id: u64) -> Option<Fill> {
        self.take_fill(&mut self.fills_mut(), slot, id)
    }

    fn take_fill(&self, fills: &mut HashMap<Slot, Vec<Fill>>, slot: Slot, id: u64) -> Option<Fill> {
        let list = fills.get_mut(&slot)?;
        let at = list.iter().position(|f| f.id == id)?;
        let fill = list.swap_remove(at);
        if list.is_empty() {
            fills.remove(&slot);
        }
        self.filling.fetch_sub(1, Ordering::Relaxed);
        Some(fill)
    }

    fn partial_hit(fill: &Fill) -> (CacheMeta, HitHandler) {
        let hit = PartialHit {
            chunks: fill.chunks.clone(),
            progress: fill.progress.subscribe(),
            read: 0,
        };
        (fill.head.meta(), Box::new(hit))
    }

    fn find_fill(&self, slot: Slot, id: Option<u64>) -> Option<(CacheMeta, HitHandler)> {
        if self.filling.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let fills = self.fills();
        let list = fills.get(&slot)?;
        let fill = match id {
            Some(id) => list.iter().find(|f| f.id == id)?,
            None => list.first()?,
        };
        Some(Self::partial_hit(fill))
    }
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let slot = slot_of(key);
        // A fill in progress first: it is newer than a stored (expired) answer.
        if let Some(found) = self.find_fill(slot, None) {
            return Ok(Some(found));
        }
        let Some(stored) = self.entries.get(&slot).filter(|s| s.slot == slot) else {
            return Ok(None);
        };
        let meta = stored.head.read().unwrap_or_else(|p| p.into_inner()).meta();
        let end = stored.body.len();
        Ok(Some((
            meta,
            Box::new(CompleteHit {
                body: stored.body.clone(),
                start: 0,
                end,
                done: false,
            }),
        )))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = streaming_write_tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        match id {
            Some(id) => Ok(self.find_fill(slot_of(key), Some(id))),
            None => self.lookup(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (route, path) = route_and_path(key.primary_key()).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "cache key without route and path")
        })?;
        let id = self.next_write.fetch_add(1, Ordering::Relaxed);
        let (progress, _) = watch::channel(Progress {
            chunks: 0,
            done: false,
        });
        let slot = slot_of(key);
        let fill = Fill {
            id,
            slot,
            route: route.into(),
            path: path.into(),
            head: Head::of(meta),
            chunks: Arc::new(RwLock::new(Vec::new())),
            progress: Arc::new(progress),
        };
        let handler = FillWriter {
            store: self,
            slot,
            id,
            tag: id.to_be_bytes(),
            route: route.into(),
            path: path.into(),
            chunks: fill.chunks.clone(),
            progress: fill.progress.clone(),
            written: 0,
            finished: false,
        };
        // Counted first, so that a purge never skips the map while it holds it.
        self.filling.fetch_add(1, Ordering::Relaxed);
        self.fills_mut().entry(slot).or_default().push(fill);
        Ok(Box::new(handler))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.remove(slot(target.key()));
        self.set_size_metric();
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let slot = slot_of(key);
        match self.entries.get(&slot).filter(|s| s.slot == slot) {
            Some(stored) => {
                *stored.head.write().unwrap_or_else(|p| p.into_inner()) = Head::of(meta);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cache::KeyParts;
    use pingora_cache::trace::Span;
    use std::time::Duration;

    fn key(route: &str, path: &str, consumer: Option<&str>) -> CacheKey {
        let parts = KeyParts {
            route,
            host: "h",
            path,
            query: None,
            consumer,
            vary: &[],
        };
        CacheKey::new(parts.primary(), route)
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("content-type", "text/plain").unwrap();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    fn leak(store: CacheStore) -> &'static CacheStore {
        Box::leak(Box::new(store))
    }

    async fn put(store: &'static CacheStore, key: &CacheKey, body: &[u8]) {
        let span = Span::inactive().handle();
        let mut miss = store.get_miss_handler(key, &meta(), &span).await.unwrap();
        let half = body.len() / 2;
        miss.write_body(Bytes::copy_from_slice(&body[..half]), false)
            .await
            .unwrap();
        miss.write_body(Bytes::copy_from_slice(&body[half..]), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    async fn read(store: &'static CacheStore, key: &CacheKey) -> Option<Vec<u8>> {
        let span = Span::inactive().handle();
        let (_, mut hit) = store.lookup(key, &span).await.unwrap()?;
        let mut body = Vec::new();
        while let Some(chunk) = hit.read_body().await.unwrap() {
            body.extend_from_slice(&chunk);
        }
        Some(body)
    }

    #[tokio::test]
    async fn stores_and_reads_back_whole_answers() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        let k = key("r", "/a", None);
        assert_eq!(read(store, &k).await, None);
        put(store, &k, b"hello world").await;
        assert_eq!(read(store, &k).await.as_deref(), Some(&b"hello world"[..]));
        assert!(store.size() > 11);
    }

    #[tokio::test]
    async fn readers_follow_a_fill_while_it_is_written() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        let k = key("r", "/stream", None);
        let span = Span::inactive().handle();
        let mut miss = store.get_miss_handler(&k, &meta(), &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"first "), false)
            .await
            .unwrap();
        let (_, mut hit) = store.lookup(&k, &span).await.unwrap().expect("the fill");
        assert_eq!(
            hit.read_body().await.unwrap().as_deref(),
            Some(&b"first "[..])
        );
        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(chunk) = hit.read_body().await.unwrap() {
                rest.extend_from_slice(&chunk);
            }
            rest
        });
        miss.write_body(Bytes::from_static(b"second"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert_eq!(reader.await.unwrap(), b"second");
        assert_eq!(read(store, &k).await.as_deref(), Some(&b"first second"[..]));
    }

    #[tokio::test]
    async fn an_abandoned_fill_is_an_error_for_its_readers_and_not_stored() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        let k = key("r", "/cut", None);
        let span = Span::inactive().handle();
        let mut miss = store.get_miss_handler(&k, &meta(), &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"part"), false)
            .await
            .unwrap();
        let (_, mut hit) = store.lookup(&k, &span).await.unwrap().expect("the fill");
        drop(miss);
        assert!(hit.read_body().await.is_ok());
        assert!(hit.read_body().await.is_err());
        assert_eq!(read(store, &k).await, None);
    }

    #[tokio::test]
    async fn answers_over_max_object_are_refused_while_written() {
        let store = leak(CacheStore::new(1 << 20, 8));
        let k = key("r", "/big", None);
        let span = Span::inactive().handle();
        let mut miss = store.get_miss_handler(&k, &meta(), &span).await.unwrap();
        assert!(miss
            .write_body(Bytes::from_static(b"0123456789"), true)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn the_size_stays_within_max_size_and_evictions_are_counted() {
        let max = 256 << 10;
        let store = leak(CacheStore::new(max, 16 << 10));
        let before = cache_metrics::families().evictions.get();
        let body = vec![7u8; 8 << 10];
        for i in 0..200 {
            put(store, &key("r", &format!("/{i}"), None), &body).await;
            assert!(store.size() <= max, "{} > {max}", store.size());
        }
        assert!(store.size() > max / 2, "it fills up: {}", store.size());
        assert!(cache_metrics::families().evictions.get() > before);
    }

    #[tokio::test]
    async fn purges_by_route_and_by_path_count_every_consumer() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        for consumer in ["alice", "bob"] {
            put(store, &key("products", "/p/1", Some(consumer)), b"1").await;
            put(store, &key("products", "/p/2", Some(consumer)), b"2").await;
        }
        put(store, &key("users", "/p/1", None), b"u").await;
        assert_eq!(store.purge("products", Some("/p/1")), 2);
        assert_eq!(
            read(store, &key("products", "/p/1", Some("bob"))).await,
            None
        );
        assert!(read(store, &key("products", "/p/2", Some("bob")))
            .await
            .is_some());
        assert_eq!(store.purge("products", None), 2);
        assert_eq!(store.purge("products", None), 0);
        assert!(read(store, &key("users", "/p/1", None)).await.is_some());
    }

    #[tokio::test]
    async fn a_purge_cancels_the_fills_it_covers() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        let span = Span::inactive().handle();
        let (purged, other) = (key("r", "/p/1", None), key("r", "/p/2", None));
        let before = store.purges();
        let mut cancelled = store
            .get_miss_handler(&purged, &meta(), &span)
            .await
            .unwrap();
        let mut kept = store
            .get_miss_handler(&other, &meta(), &span)
            .await
            .unwrap();
        cancelled
            .write_body(Bytes::from_static(b"old"), false)
            .await
            .unwrap();
        assert_eq!(store.purge("r", Some("/p/1")), 0);
        assert_eq!(store.purges(), before + 1);
        // Not found by later lookups, and not stored when it ends.
        assert!(store.lookup(&purged, &span).await.unwrap().is_none());
        cancelled.write_body(Bytes::new(), true).await.unwrap();
        cancelled.finish().await.unwrap();
        assert_eq!(read(store, &purged).await, None);
        // Another path's fill goes on.
        kept.write_body(Bytes::from_static(b"new"), true)
            .await
            .unwrap();
        kept.finish().await.unwrap();
        assert_eq!(read(store, &other).await.as_deref(), Some(&b"new"[..]));
        assert_eq!(store.filling.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_refreshed_head_replaces_the_stored_one() {
        let store = leak(CacheStore::new(1 << 20, 64 << 10));
        let k = key("r", "/m", None);
        put(store, &k, b"x").await;
        let span = Span::inactive().handle();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("etag", "\"v2\"").unwrap();
        let refreshed = CacheMeta::new(later, SystemTime::now(), 0, 0, header);
        assert!(store.update_meta(&k, &refreshed, &span).await.unwrap());
        let (meta, _) = store.lookup(&k, &span).await.unwrap().unwrap();
        assert_eq!(meta.fresh_until(), later);
        assert_eq!(meta.headers().get("etag").unwrap(), "\"v2\"");
    }
}
