//! The store's readers and writer: a stored answer read whole, an answer
//! read while it is being stored, and the writer that stores it.

use super::{CacheStore, Progress, Slot, Stored, ENTRY_OVERHEAD};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, Storage};
use pingora_core::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// A stored answer being read.
pub(super) struct CompleteHit {
    pub(super) body: Bytes,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) done: bool,
}

/// An answer being read while it is stored.
pub(super) struct PartialHit {
    pub(super) chunks: Arc<RwLock<Vec<Bytes>>>,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) read: usize,
}

#[async_trait]
impl HandleHit for CompleteHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek past the body's end");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            if progress.chunks > self.read {
                let chunk = self
                    .chunks
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(self.read)
                    .cloned();
                self.read += 1;
                if let Some(chunk) = chunk {
                    return Ok(Some(chunk));
                }
                continue;
            }
            if progress.done {
                return Ok(None);
            }
            // The writer went away before the end: the body is cut short.
            if self.progress.changed().await.is_err() {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "the answer being stored was abandoned",
                );
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Writes one answer into the store: readable as it arrives, stored whole at
/// the end. Dropped unfinished (the upstream failed, too large): forgotten.
pub(super) struct FillWriter {
    pub(super) store: &'static CacheStore,
    pub(super) slot: Slot,
    pub(super) id: u64,
    pub(super) tag: [u8; 8],
    pub(super) route: Box<str>,
    pub(super) path: Box<str>,
    pub(super) chunks: Arc<RwLock<Vec<Bytes>>>,
    pub(super) progress: Arc<watch::Sender<Progress>>,
    pub(super) written: usize,
    pub(super) finished: bool,
}

#[async_trait]
impl HandleMiss for FillWriter {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.written += data.len();
        if self.written > self.store.max_object {
            return Error::e_explain(ErrorType::InternalError, "answer larger than max_object");
        }
        let chunks = {
            let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
            if !data.is_empty() {
                chunks.push(data);
            }
            chunks.len()
        };
        self.progress.send_replace(Progress { chunks, done: eof });
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        // Readers still streaming this fill keep reading the chunks themselves.
        let chunks: Vec<Bytes> = self
            .chunks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks[0].clone(),
            _ => {
                let mut body = BytesMut::with_capacity(self.written);
                for chunk in &chunks {
                    body.extend_from_slice(chunk);
                }
                body.freeze()
            }
        };
        self.progress.send_modify(|p| p.done = true);
        // One lock across ending the fill and storing it, as a purge holds it
        // across cancelling fills and dropping entries (`CacheStore::purge`).
        let mut fills = self.store.fills_mut();
        let Some(fill) = self.store.take_fill(&mut fills, self.slot, self.id) else {
            // Cancelled by a purge (or, defensively, already gone).
            return Ok(MissFinishType::Created(0));
        };
        let bytes = body.len() + fill.head.bytes() + self.path.len() + ENTRY_OVERHEAD;
        let stored = Stored {
            slot: self.slot,
            route: self.route.clone(),
            path: self.path.clone(),
            head: RwLock::new(fill.head),
            body,
            bytes,
        };
        let admitted = self.store.admit(stored);
        drop(fills);
        Ok(MissFinishType::Created(admitted))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.store.end_fill(self.slot, self.id);
        }
    }
}
