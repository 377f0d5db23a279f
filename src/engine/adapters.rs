//! The engine's adapter plumbing outside the worker: resolving a request's model name through the
//! PEFT registry, pinning it in the host cache (CAPACITY when full of active adapters), and the
//! loader thread that parses and validates adapters off the worker's hot loop and rescans the
//! sources every `peft_refresh_interval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::worker::Command;
use super::Shared;
use crate::adapters::{load_adapter, AdapterLimits, ModelShape};
use crate::cache::{Acquired, AdapterKey, HostCache, LoadState};
use crate::error::{Error, Result};

/// A load for the loader thread.
pub(crate) struct LoadJob {
    pub key: AdapterKey,
    pub dir: PathBuf,
}

/// Messages to the loader thread.
pub(crate) enum LoaderMsg {
    Load(LoadJob),
    /// A new (shorter) refresh interval.
    Interval(Duration),
    Shutdown,
}

/// Resolves `name` to its current generation and pins it `pins` times (one per sequence of the
/// request, at least one) in the host cache, starting a load when needed. NOT_FOUND for unknown
/// names, CAPACITY when the host cache is full of active adapters, INVALID_ADAPTER (immediately)
/// when this generation is known to be refused; on an error nothing stays pinned.
pub(crate) fn acquire_adapter(
    shared: &Shared,
    loader: &Sender<LoaderMsg>,
    name: &str,
    pins: usize,
) -> Result<AdapterKey> {
    let info = {
        let reg = shared.registry.lock();
        match reg.get(name) {
            Some(i) => i.clone(),
            None => {
                let known: Vec<String> = reg.adapters().map(|a| a.name.clone()).collect();
                return Err(Error::not_found(format!(
                    "model \"{name}\" not found: it is neither the base model nor an adapter in the PEFT sources (adapters: [{}])",
                    known.join(", ")
                )));
            }
        }
    };
    let key: AdapterKey = (info.name.clone(), info.generation);
    let mut host = shared.host.lock();
    let acquired = host
        .acquire(&key)
        .map_err(|e| capacity_retry(shared, &host, e))?;
    host.add_pins(&key, pins.saturating_sub(1));
    let unpin = |host: &mut HostCache| {
        for _ in 0..pins.max(1) {
            host.release(&key);
        }
    };
    match acquired {
        Acquired::MustLoad { .. } => {
            drop(host);
            if loader
                .send(LoaderMsg::Load(LoadJob {
                    key: key.clone(),
                    dir: info.dir,
                }))
                .is_err()
            {
                unpin(&mut shared.host.lock());
                return Err(Error::new(
                    crate::ErrorCode::EngineFailed,
                    "adapter loader is not running",
                ));
            }
        }
        Acquired::Cached => {
            if let Some(LoadState::Failed(e)) = host.get(&key).map(|e| &e.state) {
                let e = e.clone();
                unpin(&mut host);
                return Err(e);
            }
        }
    }
    Ok(key)
}

/// Marks a CAPACITY refusal of the host cache with its limit and the estimated wait until the
/// least-used pinned adapter is free (its sequences completing at the recent rate).
pub(crate) fn capacity_retry(shared: &Shared, host: &HostCache, e: Error) -> Error {
    if e.code() != crate::ErrorCode::Capacity {
        return e;
    }
    let after = shared
        .drain
        .lock()
        .retry_after(host.fewest_pins(), Instant::now());
    e.with_retry(crate::error::Retry {
        limit: "max_cpu_loras",
        after,
    })
}

/// The loader thread's loop: loads adapters and rescans sources on the refresh interval.
pub(crate) fn loader_loop(
    shared: Arc<Shared>,
    rx: Receiver<LoaderMsg>,
    worker: Sender<Command>,
    shape: ModelShape,
    limits: AdapterLimits,
    mut interval: Option<Duration>,
) {
    let mut next_scan = interval.map(|i| Instant::now() + i);
    loop {
        let wait = next_scan
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(LoaderMsg::Load(job)) => {
                let t0 = Instant::now();
                let result = load_adapter(&job.dir, &job.key.0, &shape, &limits).map(Arc::new);
                if let Ok(a) = &result {
                    // Not nested in the host lock: the lock order is registry, then host.
                    shared
                        .registry
                        .lock()
                        .note_loaded(&job.key.0, job.key.1, &a.generation);
                }
                shared.host.lock().complete(&job.key, result, t0.elapsed());
                let _ = worker.send(Command::AdaptersChanged);
            }
            Ok(LoaderMsg::Interval(d)) => {
                interval = Some(interval.map_or(d, |i| i.min(d)));
                next_scan = Some(Instant::now() + d);
            }
            Ok(LoaderMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                rescan(&shared);
                next_scan = interval.map(|i| Instant::now() + i);
            }
        }
    }
}

/// Rescans every source and drops unpinned host entries of changed or removed adapters. The scan
/// is told what the host cache holds of each generation, so that an adapter whose files were
/// touched but whose content is that of its loaded copy keeps its generation (and its cached
/// prefix blocks).
pub(crate) fn rescan(shared: &Shared) -> crate::adapters::source::ScanReport {
    use crate::adapters::source::Served;
    // Lock order everywhere: registry, then host cache.
    let mut reg = shared.registry.lock();
    let report = reg.scan_with(&|name, generation| {
        let host = shared.host.lock();
        match host.get(&(name.to_string(), generation)).map(|e| &e.state) {
            Some(LoadState::Ready(a)) => Served::Content(a.generation.clone()),
            Some(LoadState::Loading | LoadState::Failed(_)) => Served::Pending,
            None => Served::Nothing,
        }
    });
    if !report.changed.is_empty() || !report.removed.is_empty() {
        let mut host = shared.host.lock();
        for n in report.changed.iter().chain(&report.removed) {
            host.forget_stale(n, reg.get(n).map(|a| a.generation));
        }
    }
    report
}
