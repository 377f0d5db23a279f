//! The Rust API: [`Engine`] owns a worker thread that owns the model; any thread may
//! [`Engine::submit`], [`Engine::poll`] and [`Engine::cancel`].
//!
//! Threading: `Engine` is `Send + Sync`; share it in an `Arc`. Dropping it cancels every request
//! still in flight (each gets a final `Cancelled` output) and joins the worker.

mod adapters;
mod admin;
mod request;
mod sequence;
mod worker;

pub use request::{FinishReason, Output, Prompt, Request, RequestId, TokenLogprob, Usage};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::adapters::source::PeftRegistry;
use crate::adapters::{AdapterLimits, ModelShape};
use crate::backend::LoraStackGeometry;
use crate::backend::{Backend, KvGeometry};
use crate::cache::{DeviceSlots, HostCache, MemoryPlan};
use crate::config::EngineConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::Llama;
use crate::model::{ModelConfig, ModelFiles};
use crate::sched::{Scheduler, StepLimits};
use crate::tokenizer::Tokenizer;
use adapters::LoaderMsg;
use sequence::Sequence;
use worker::{Command, Worker};

/// Live counters published by the worker after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences holding KV blocks.
    pub running: usize,
    /// Sequences waiting for admission.
    pub waiting: usize,
    /// Free KV blocks.
    pub kv_blocks_free: usize,
    /// All KV blocks.
    pub kv_blocks_total: usize,
    /// KV block size in tokens.
    pub kv_block_size: usize,
    /// Bytes of the KV cache.
    pub kv_cache_bytes: usize,
    /// Bytes of packed base weights.
    pub weight_bytes: usize,
    /// Steps run so far.
    pub steps: u64,
}

/// A request's output channel: the worker sends, pollers receive.
type OutputChannel = (Sender<Output>, Receiver<Output>);

/// Per-adapter serving state published by the worker after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterRuntime {
    /// Running sequences using it.
    pub running: usize,
    /// Queued sequences waiting for it (for admission, its load or a device slot).
    pub queued: usize,
    /// Device slot holding it, if resident.
    pub device_slot: Option<usize>,
}

pub(crate) struct Shared {
    outputs: Mutex<HashMap<RequestId, OutputChannel>>,
    /// Lock order: `registry` before `host` when both are held.
    pub(crate) registry: Mutex<PeftRegistry>,
    pub(crate) host: Mutex<HostCache>,
    pub(crate) adapter_runtime: Mutex<HashMap<String, AdapterRuntime>>,
    pub(crate) plan: MemoryPlan,
    pub(crate) active: AtomicUsize,
    pub(crate) steps: AtomicU64,
    pub(crate) stats: Mutex<EngineStats>,
    failed: Mutex<Option<Error>>,
}

/// A running engine. See the module docs for threading.
pub struct Engine {
    cfg: EngineConfig,
    model_cfg: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    max_model_len: usize,
    tx: Sender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    seed_base: u64,
    loader_tx: Sender<LoaderMsg>,
    worker: Mutex<Option<JoinHandle<()>>>,
    loader: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Loads the model named by `cfg.model` and starts the worker on the backend chosen from
    /// `cfg.device` ([`crate::backend::select()`]). Errors: INVALID_ARGUMENT for a bad config or
    /// device string, IO / INVALID_MODEL / UNSUPPORTED for the model, UNSUPPORTED for `cuda:N`
    /// devices in a build without CUDA.
    pub fn new(cfg: EngineConfig) -> Result<Self> {
        cfg.validate()?;
        let backend = crate::backend::select(&cfg.device, cfg.threads)?;
        let files = ModelFiles::load(&cfg.model).map_err(|e| e.context(cfg.model.display()))?;
        let ModelFiles {
            config: model_cfg,
            mut tensors,
            tokenizer,
        } = files;
        let model = Llama::load(&backend, &model_cfg, &mut tensors, cfg.weight_format)
            .map_err(|e| e.context(cfg.model.display()))?;
        drop(tensors);
        let tokenizer = Arc::new(tokenizer);

        let max_model_len = if cfg.max_model_len == 0 {
            model_cfg.max_position_embeddings.min(8192)
        } else {
            cfg.max_model_len
        };
        if max_model_len > model_cfg.max_position_embeddings {
            return Err(Error::invalid_argument(format!(
                "max_model_len {max_model_len} exceeds the model's max_position_embeddings {}",
                model_cfg.max_position_embeddings
            )));
        }
        let shape = ModelShape::of(&model_cfg, crate::tensor::DType::F32);
        let lora_geom = LoraStackGeometry {
            num_slots: cfg.max_gpu_loras,
            max_rank: cfg.max_lora_rank,
            num_layers: model_cfg.num_layers,
            dims: shape.lora_dims(),
        };
        let lora_stack = backend.alloc_lora_stack(lora_geom)?;
        let mut plan = MemoryPlan {
            weights_bytes: model.weight_bytes(),
            host_adapter_cache_bytes: cfg.max_cpu_loras
                * MemoryPlan::adapter_elems(&shape, cfg.max_lora_rank)
                * 4,
            device_adapter_cache_bytes: backend.lora_stack_bytes(&lora_stack),
            activations_bytes: MemoryPlan::activation_bytes(
                &shape,
                model_cfg.vocab_size,
                cfg.max_batch_tokens,
                cfg.max_lora_rank,
            ),
            kv_cache_bytes: 0,
        };
        let bs = cfg.kv_block_size;
        let bytes_per_block = 2 * model_cfg.num_layers * bs * model_cfg.kv_dim() * 4;
        let kv_bytes = if cfg.kv_cache_bytes == 0 && cfg.memory_budget_bytes > 0 {
            let others = plan.total();
            if others >= cfg.memory_budget_bytes {
                return Err(Error::invalid_argument(format!(
                    "memory_budget_bytes {} leaves nothing for the KV cache: weights {} + host adapter cache {} + device adapter cache {} + activations {} = {others} bytes",
                    cfg.memory_budget_bytes,
                    plan.weights_bytes,
                    plan.host_adapter_cache_bytes,
                    plan.device_adapter_cache_bytes,
                    plan.activations_bytes
                )));
            }
            cfg.memory_budget_bytes - others
        } else if cfg.kv_cache_bytes == 0 {
            (cfg.max_num_seqs * max_model_len)
                .div_ceil(bs)
                .saturating_mul(bytes_per_block)
                .min(1 << 30)
        } else {
            cfg.kv_cache_bytes
        };
        let num_blocks = kv_bytes / bytes_per_block;
        if num_blocks == 0 {
            return Err(Error::invalid_argument(format!(
                "kv_cache_bytes {kv_bytes} is smaller than one KV block ({bytes_per_block} bytes)"
            )));
        }
        let geom = KvGeometry {
            num_layers: model_cfg.num_layers,
            num_blocks,
            block_size: bs,
            num_kv_heads: model_cfg.num_kv_heads,
            head_dim: model_cfg.head_dim,
        };
        let kv = backend.alloc_kv(geom)?;
        plan.kv_cache_bytes = geom.bytes();
        let mut registry = PeftRegistry::new();
        for src in &cfg.peft_source {
            registry
                .add_source(src)
                .map_err(|e| e.context("peft_source"))?;
        }
        let stats = EngineStats {
            kv_blocks_free: num_blocks,
            kv_blocks_total: num_blocks,
            kv_block_size: bs,
            kv_cache_bytes: geom.bytes(),
            weight_bytes: model.weight_bytes(),
            ..EngineStats::default()
        };
        let shared = Arc::new(Shared {
            outputs: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            stats: Mutex::new(stats),
            failed: Mutex::new(None),
            registry: Mutex::new(registry),
            host: Mutex::new(HostCache::new(cfg.max_cpu_loras)),
            adapter_runtime: Mutex::new(HashMap::new()),
            plan,
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (loader_tx, loader_rx) = crossbeam_channel::unbounded();
        let limits = AdapterLimits {
            max_lora_rank: cfg.max_lora_rank,
        };
        let (lshared, ltx, interval) = (shared.clone(), tx.clone(), cfg.peft_refresh_interval);
        let loader = std::thread::Builder::new()
            .name("loraplex-adapter-loader".into())
            .spawn(move || adapters::loader_loop(lshared, loader_rx, ltx, shape, limits, interval))
            .map_err(|e| Error::internal(format!("cannot start adapter loader thread: {e}")))?;
        let mut worker = Worker {
            backend,
            model,
            kv,
            alloc: BlockAllocator::new(num_blocks, bs)?,
            sched: Scheduler::new(),
            seqs: HashMap::new(),
            tokenizer: tokenizer.clone(),
            limits: StepLimits {
                max_num_seqs: cfg.max_num_seqs,
                max_batch_tokens: cfg.max_batch_tokens,
            },
            rx,
            shared: shared.clone(),
            lora_stack,
            slots: DeviceSlots::new(cfg.max_gpu_loras),
        };
        let wshared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("loraplex-worker".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
                let err = match r {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => Error::new(
                        ErrorCode::EngineFailed,
                        format!("engine failed: {}", e.message()),
                    ),
                    Err(p) => Error::new(
                        ErrorCode::EngineFailed,
                        format!("engine worker panicked: {}", panic_text(&p)),
                    ),
                };
                fail_all(&wshared, err);
            })
            .map_err(|e| Error::internal(format!("cannot start worker thread: {e}")))?;
        let seed_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Ok(Self {
            cfg,
            model_cfg,
            tokenizer,
            max_model_len,
            tx,
            shared,
            next_id: AtomicU64::new(1),
            seed_base,
            loader_tx,
            worker: Mutex::new(Some(handle)),
            loader: Mutex::new(Some(loader)),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// The base model's configuration.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_cfg
    }
    /// The tokenizer (shared, immutable).
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    /// The longest prompt + completion accepted.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }
    /// The base model's served name.
    pub fn served_name(&self) -> String {
        self.cfg.served_name()
    }
    /// A snapshot of the worker's counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.shared.stats.lock().clone();
        s.steps = self.shared.steps.load(Ordering::Relaxed);
        s
    }

    /// Tokenises the prompt of `req` as [`Engine::submit`] would.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => self.tokenizer.encode(t, true),
            Prompt::Tokens(ids) => Ok(ids.clone()),
            Prompt::Chat(msgs) => {
                if msgs.is_empty() {
                    return Err(Error::invalid_argument("messages: must not be empty"));
                }
                let text = self.tokenizer.apply_chat_template(msgs, true)?;
                self.tokenizer.encode(&text, false)
            }
        }
    }

    /// Queues a request; returns its id. Validation happens here (the error names the field):
    /// sampling values, empty or over-long prompts, token ids outside the vocabulary, unknown
    /// model names (NOT_FOUND). QUEUE_FULL when `max_queue` requests are in flight;
    /// ENGINE_FAILED after a worker failure.
    pub fn submit(&self, req: Request) -> Result<RequestId> {
        if let Some(e) = self.shared.failed.lock().clone() {
            return Err(e);
        }
        req.sampling.validate()?;
        let adapter_name = match req.model.as_deref() {
            None | Some("") => None,
            Some(m) if m == self.served_name() => None,
            Some(m) => Some(m.to_string()),
        };
        let prompt = self.prompt_tokens(&req.prompt)?;
        if prompt.is_empty() {
            return Err(Error::invalid_argument("prompt: must not be empty"));
        }
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.model_cfg.vocab_size)
        {
            return Err(Error::invalid_argument(format!(
                "prompt: token id {bad} is outside the vocabulary (size {})",
                self.model_cfg.vocab_size
            )));
        }
        if prompt.len() >= self.max_model_len {
            return Err(Error::invalid_argument(format!(
                "prompt: {} tokens leaves no room to generate within max_model_len {}",
                prompt.len(),
                self.max_model_len
            )));
        }
        if self.shared.active.load(Ordering::Acquire) >= self.cfg.max_queue {
            return Err(Error::new(
                ErrorCode::QueueFull,
                format!(
                    "{} requests in flight (max_queue {})",
                    self.cfg.max_queue, self.cfg.max_queue
                ),
            ));
        }
        let adapter = match &adapter_name {
            Some(name) => Some(adapters::acquire_adapter(
                &self.shared,
                &self.loader_tx,
                name,
            )?),
            None => None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = crossbeam_channel::unbounded();
        let seed = self.seed_base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let seq = Sequence::new(
            id,
            prompt,
            req.sampling,
            seed,
            self.max_model_len,
            self.model_cfg.eos_token_ids.clone(),
            otx.clone(),
            adapter.clone(),
        );
        self.shared.outputs.lock().insert(id, (otx, orx));
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Command::Submit(Box::new(seq))).is_err() {
            self.shared.outputs.lock().remove(&id);
            if let Some(k) = &adapter {
                self.shared.host.lock().release(k);
            }
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::new(
                ErrorCode::EngineFailed,
                "engine worker is not running",
            ));
        }
        Ok(id)
    }

    /// Waits up to `timeout` for news about `id`: returns everything that arrived, merged into one
    /// delta, or `None` on timeout (a zero timeout does not block). After the final output the id
    /// is forgotten (polling it again is NOT_FOUND).
    pub fn poll(&self, id: RequestId, timeout: Duration) -> Result<Option<Output>> {
        let rx = {
            let map = self.shared.outputs.lock();
            match map.get(&id) {
                Some((_, rx)) => rx.clone(),
                None => {
                    return Err(Error::not_found(format!(
                        "request {id} is not known (finished, or never submitted)"
                    )))
                }
            }
        };
        let first = if timeout.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(timeout).ok()
        };
        let Some(mut out) = first else {
            return Ok(None);
        };
        while !out.is_final() {
            match rx.try_recv() {
                Ok(more) => out.merge(more),
                Err(_) => break,
            }
        }
        if out.is_final() {
            self.shared.outputs.lock().remove(&id);
        }
        Ok(Some(out))
    }

    /// Cancels `id` (idempotent: unknown or finished ids are fine). The request's final output
    /// has finish reason `Cancelled`.
    pub fn cancel(&self, id: RequestId) -> Result<()> {
        if self.shared.outputs.lock().contains_key(&id) {
            // If the worker is gone the request was already failed.
            let _ = self.tx.send(Command::Cancel(id));
        }
        Ok(())
    }

    /// Submits and waits for the whole result (convenience for tests and examples).
    pub fn generate(&self, req: Request) -> Result<Output> {
        let id = self.submit(req)?;
        self.wait(id)
    }

    /// Polls `id` until its final output and returns everything merged. A failed request returns
    /// its error.
    pub fn wait(&self, id: RequestId) -> Result<Output> {
        let mut acc: Option<Output> = None;
        loop {
            if let Some(o) = self.poll(id, Duration::from_millis(100))? {
                match &mut acc {
                    Some(a) => a.merge(o),
                    None => acc = Some(o),
                }
                if let Some(a) = &acc {
                    if a.is_final() {
                        if let Some(e) = &a.error {
                            if a.finish_reason == Some(FinishReason::Error) {
                                return Err(e.clone());
                            }
                        }
                        return Ok(acc.unwrap_or_else(|| Output::new(id, Usage::default())));
                    }
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        let _ = self.loader_tx.send(LoaderMsg::Shutdown);
        if let Some(h) = self.worker.lock().take() {
            let _ = h.join();
        }
        if let Some(h) = self.loader.lock().take() {
            let _ = h.join();
        }
    }
}

/// Marks the engine failed and ends every request with `err`.
fn fail_all(shared: &Shared, err: Error) {
    *shared.failed.lock() = Some(err.clone());
    let map = shared.outputs.lock();
    for (&id, (tx, _)) in map.iter() {
        let mut o = Output::new(id, Usage::default());
        o.finish_reason = Some(FinishReason::Error);
        o.error = Some(err.clone());
        let _ = tx.send(o);
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
