//! The Rust API: [`Engine`] owns a worker thread that owns the model; any thread may
//! [`Engine::submit`], [`Engine::poll`] and [`Engine::cancel`].
//!
//! Threading: `Engine` is `Send + Sync`; share it in an `Arc`. Dropping it cancels every request
//! still in flight (each gets a final `Cancelled` output) and joins the worker.

mod adapters;
mod admin;
mod admit;
mod batch;
mod drain;
mod group;
mod request;
mod sequence;
mod worker;

pub use request::{
    AdapterMix, FinishReason, Output, Prompt, PromptOutput, Request, RequestId, TokenLogprob,
    Usage, MAX_CHOICES,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::adapters::source::PeftRegistry;
use crate::adapters::{AdapterLimits, ModelShape};
use crate::backend::{Backend, MAX_MIX};
use crate::cache::plan::{ModelLen, ModelLenBound, Sizing};
use crate::cache::{DeviceSlots, HostCache, MemoryPlan};
use crate::config::EngineConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::Llama;
use crate::model::{ModelConfig, ModelFiles};
use crate::sampling::{Constraint, ConstraintCompiler};
use crate::sched::{Scheduler, StepLimits, TenantPolicy};
use crate::tokenizer::Tokenizer;
use adapters::LoaderMsg;
use sequence::{AdapterUse, Sequence, SequenceInit};
use worker::{Command, Submission, Worker};

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
    /// Steps run so far (steps that computed at least one row).
    pub steps: u64,
    /// Token rows (decode rows plus prefill chunk tokens) in the last step.
    pub last_step_rows: usize,
    /// Sequences in the last step.
    pub last_step_seqs: usize,
    /// Most token rows in one step so far.
    pub max_step_rows: usize,
    /// Most sequences in one step so far: requests in flight together shared a step when this
    /// reaches their number.
    pub max_step_seqs: usize,
    /// Prompt positions whose KV blocks a choice (`n`/`best_of` > 1) shared with its request's
    /// first choice instead of computing them.
    pub prompt_tokens_shared: u64,
    /// Tokens of sequences looked up in the prefix cache before admission (vLLM's
    /// `prefix_cache_queries`).
    pub prefix_cache_queries: u64,
    /// Of those, tokens whose K/V came from the cache instead of being computed (vLLM's
    /// `prefix_cache_hits`).
    pub prefix_cache_hits: u64,
    /// KV blocks the prefix cache holds (some also in use by running sequences).
    pub prefix_cache_blocks: usize,
    /// Adapter requests admitted (a mixture counts once).
    pub adapter_admissions: u64,
    /// Of those, the ones that found every adapter already resident in a device slot (used
    /// before, or prefetched while they waited) instead of uploading at admission.
    pub adapter_admissions_resident: u64,
    /// Adapters uploaded to a device slot ahead of their request's admission.
    pub adapter_prefetches: u64,
    /// Uploads into device slots so far (admission and prefetch; adapters with the same
    /// content share a slot, so they upload once).
    pub device_uploads: u64,
}

/// A request's output channel: the worker sends, pollers receive.
/// One request's output queue: the worker sends deltas into `tx`; `poll` reads `rx` and keeps
/// `stash`, a delta of another choice read while merging one choice's deltas.
struct OutputChannel {
    tx: Sender<Output>,
    rx: Receiver<Output>,
    stash: Mutex<Option<Output>>,
}

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
    outputs: Mutex<HashMap<RequestId, Arc<OutputChannel>>>,
    /// Lock order: `registry` before `host` when both are held.
    pub(crate) registry: Mutex<PeftRegistry>,
    pub(crate) host: Mutex<HostCache>,
    pub(crate) adapter_runtime: Mutex<HashMap<String, AdapterRuntime>>,
    pub(crate) plan: MemoryPlan,
    pub(crate) active: AtomicUsize,
    pub(crate) steps: AtomicU64,
    pub(crate) stats: Mutex<EngineStats>,
    /// Recent completions, for the `Retry-After` of refusals under load.
    pub(crate) drain: Mutex<drain::DrainRate>,
    failed: Mutex<Option<Error>>,
    /// The backend's kernel paths ([`Backend::kernel_path`]), for stats.
    pub(crate) kernels: String,
}

/// A running engine. See the module docs for threading.
pub struct Engine {
    cfg: EngineConfig,
    model_cfg: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    max_model_len: usize,
    max_model_len_bound: ModelLenBound,
    tx: Sender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    seed_base: u64,
    /// Compiles output constraints; built on the first constrained request.
    constraints: Mutex<Option<Arc<ConstraintCompiler>>>,
    loader_tx: Sender<LoaderMsg>,
    worker: Mutex<Option<JoinHandle<()>>>,
    loader: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Loads the model named by `cfg.model`, sizes the engine ([`MemoryPlan::size`]) and starts
    /// the worker on the backend chosen from `cfg.device` ([`crate::backend::select()`]). Errors:
    /// INVALID_ARGUMENT for a bad config or device string (including a `max_model_len` over the
    /// model's `max_position_embeddings`, and a memory budget the parts
    /// exceed), IO / INVALID_MODEL / UNSUPPORTED for the model (every checkpoint tensor must be
    /// used, see [`crate::model::layout::account_tensors`]), UNSUPPORTED for `cuda:N` devices in a
    /// build without CUDA, DEVICE for a CUDA device that cannot be opened or lacks the memory.
    pub fn new(cfg: EngineConfig) -> Result<Self> {
        cfg.validate()?;
        let backend = crate::backend::select(&cfg.device, cfg.threads)?;
        let driver = backend.driver();
        let files = ModelFiles::load(&cfg.model).map_err(|e| e.context(cfg.model.display()))?;
        let ModelFiles {
            config: model_cfg,
            mut tensors,
            tokenizer,
        } = files;
        // Checked before the weights are packed: a bad max_model_len fails fast.
        let model_len = ModelLen::resolve(cfg.max_model_len, &model_cfg)?;
        let model = Llama::load(&backend, &model_cfg, &mut tensors, cfg.weight_format)
            .map_err(|e| e.context(cfg.model.display()))?;
        drop(tensors);
        let tokenizer = Arc::new(tokenizer);
        let max_model_len = model_len.tokens;
        let Sizing {
            plan,
            kv: geom,
            lora: lora_geom,
        } = MemoryPlan::size_on(
            &cfg,
            &model_cfg,
            model_len,
            model.weight_bytes(),
            backend.device_memory()?,
        )?;
        let shape = ModelShape::of(&model_cfg, crate::tensor::DType::F32);
        let lora_stack = backend.alloc_lora_stack(lora_geom)?;
        let kv = backend.alloc_kv(geom)?;
        let (num_blocks, bs) = (geom.num_blocks, geom.block_size);
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
            kv_cache_bytes: plan.kv_cache_bytes,
            weight_bytes: plan.weights_bytes,
            ..EngineStats::default()
        };
        let shared = Arc::new(Shared {
            outputs: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            stats: Mutex::new(stats),
            drain: Mutex::new(drain::DrainRate::default()),
            failed: Mutex::new(None),
            registry: Mutex::new(registry),
            host: Mutex::new(HostCache::new(cfg.max_cpu_loras)),
            adapter_runtime: Mutex::new(HashMap::new()),
            plan,
            kernels: backend.kernel_path(),
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
            alloc: {
                let a = BlockAllocator::new(num_blocks, bs)?;
                if cfg.prefix_caching {
                    a.with_prefix_cache()
                } else {
                    a
                }
            },
            sched: Scheduler::with_policy(tenant_policy(&cfg)),
            seqs: HashMap::new(),
            groups: HashMap::new(),
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
                // The loop runs inside the backend's pool (see `Driver::run`).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    driver.run(|| worker.run())
                }));
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
            max_model_len_bound: model_len.bound,
            tx,
            shared,
            next_id: AtomicU64::new(1),
            seed_base,
            constraints: Mutex::new(None),
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
        let s = self.shared.stats.lock();
        // Read under the lock the worker counts steps under, so the count matches the rows.
        let mut out = s.clone();
        out.steps = self.shared.steps.load(Ordering::Relaxed);
        out
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
        self.check_choices(&req)?;
        let mix = self.adapter_mix(&req)?;
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
        let in_flight = self.shared.active.load(Ordering::Acquire);
        let nseq = req.num_sequences();
        if in_flight + nseq > self.cfg.max_queue.max(nseq) {
            let excess = in_flight + nseq - self.cfg.max_queue.max(nseq);
            let after = self
                .shared
                .drain
                .lock()
                .retry_after(excess, std::time::Instant::now());
            return Err(Error::new(
                ErrorCode::QueueFull,
                format!(
                    "limit max_queue ({}) reached: {in_flight} sequences in flight and this request adds {nseq}; retry in {} s",
                    self.cfg.max_queue,
                    after.as_secs()
                ),
            )
            .with_retry(crate::error::Retry {
                limit: "max_queue",
                after,
            }));
        }
        let constraints = self.compile_constraints(&req)?;
        let prompt_out =
            (req.echo || req.sampling.prompt_logprobs.is_some()).then(|| PromptOutput {
                text: match &req.prompt {
                    Prompt::Text(t) => t.clone(),
                    _ => self.tokenizer.decode(&prompt, false).unwrap_or_default(),
                },
                token_ids: prompt.clone(),
                logprobs: Vec::new(),
            });
        let nseq = req.num_sequences();
        let adapters = self.pin_adapters(&mix, nseq)?;
        let id = self.next_id.fetch_add(nseq as u64, Ordering::Relaxed);
        let (otx, orx) = crossbeam_channel::unbounded();
        let seed = self.seed_base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut seqs = Vec::with_capacity(nseq);
        let mut constraints = constraints.into_iter();
        for index in 0..nseq {
            seqs.push(Sequence::new(SequenceInit {
                id: id + index as u64,
                request: id,
                index,
                prompt: prompt.clone(),
                params: req.sampling.clone(),
                seed_fallback: seed,
                max_len: self.max_model_len,
                eos_ids: self.model_cfg.eos_token_ids.clone(),
                adapters: adapters.clone(),
                prompt_out: prompt_out.clone(),
                constraint: constraints.next(),
            }));
        }
        // The other choices share the first one's prompt KV blocks once it computed them.
        let waiting = (1..nseq as u64).map(|k| id + k).collect();
        let group = group::ChoiceGroup::new(req.n, nseq, id, waiting, otx.clone());
        self.shared.outputs.lock().insert(
            id,
            Arc::new(OutputChannel {
                tx: otx,
                rx: orx,
                stash: Mutex::new(None),
            }),
        );
        self.shared.active.fetch_add(nseq, Ordering::AcqRel);
        if self
            .tx
            .send(Command::Submit(Box::new(Submission { group, seqs })))
            .is_err()
        {
            self.shared.outputs.lock().remove(&id);
            self.unpin_adapters(&adapters, nseq);
            self.shared.active.fetch_sub(nseq, Ordering::AcqRel);
            return Err(Error::new(
                ErrorCode::EngineFailed,
                "engine worker is not running",
            ));
        }
        Ok(id)
    }

    /// The adapters `req` runs with, as (name, scale): its `adapters` mixture, else the adapter
    /// its `model` names at scale 1, else none. Errors (INVALID_ARGUMENT, naming the field): a
    /// mixture next to a `model` that names an adapter, more than [`MAX_MIX`] adapters or more
    /// than the engine's device slots, repeated or empty names, non-finite scales.
    fn adapter_mix(&self, req: &Request) -> Result<Vec<(String, f32)>> {
        let model = match req.model.as_deref() {
            None | Some("") => None,
            Some(m) if m == self.served_name() => None,
            Some(m) => Some(m),
        };
        if req.adapters.is_empty() {
            return Ok(model.map(|m| (m.to_string(), 1.0)).into_iter().collect());
        }
        if let Some(m) = model {
            return Err(Error::invalid_argument(format!(
                "adapters: a mixture runs on the base model, but model names \"{m}\"; set model to \"{}\" or leave it empty",
                self.served_name()
            )));
        }
        let limit = MAX_MIX.min(self.cfg.max_gpu_loras);
        if req.adapters.len() > limit {
            return Err(Error::invalid_argument(format!(
                "adapters: {} adapters, but a request mixes at most {limit} (the smaller of {MAX_MIX} and max_gpu_loras {})",
                req.adapters.len(),
                self.cfg.max_gpu_loras
            )));
        }
        let mut out: Vec<(String, f32)> = Vec::with_capacity(req.adapters.len());
        for (i, a) in req.adapters.iter().enumerate() {
            if a.name.is_empty() || a.name == self.served_name() {
                return Err(Error::invalid_argument(format!(
                    "adapters[{i}].name: \"{}\" is not an adapter name",
                    a.name
                )));
            }
            if !a.scale.is_finite() {
                return Err(Error::invalid_argument(format!(
                    "adapters[{i}].scale: {} is not a finite number",
                    a.scale
                )));
            }
            if out.iter().any(|(n, _)| *n == a.name) {
                return Err(Error::invalid_argument(format!(
                    "adapters[{i}].name: \"{}\" is listed twice",
                    a.name
                )));
            }
            out.push((a.name.clone(), a.scale));
        }
        Ok(out)
    }

    /// Pins each adapter of `mix` once per sequence (`nseq`) in the host cache, starting loads
    /// as needed; on an error nothing stays pinned.
    fn pin_adapters(&self, mix: &[(String, f32)], nseq: usize) -> Result<Vec<AdapterUse>> {
        let mut pinned: Vec<AdapterUse> = Vec::with_capacity(mix.len());
        for (name, scale) in mix {
            match adapters::acquire_adapter(&self.shared, &self.loader_tx, name, nseq) {
                Ok(key) => pinned.push(AdapterUse { key, scale: *scale }),
                Err(e) => {
                    self.unpin_adapters(&pinned, nseq);
                    return Err(e);
                }
            }
        }
        Ok(pinned)
    }

    /// Releases `nseq` pins of each of `adapters`.
    fn unpin_adapters(&self, adapters: &[AdapterUse], nseq: usize) {
        if adapters.is_empty() {
            return;
        }
        let mut host = self.shared.host.lock();
        for _ in 0..nseq {
            for a in adapters {
                host.release(&a.key);
            }
        }
    }

    /// Checks `n`, `best_of` and the `logit_bias` token ids of `req`.
    fn check_choices(&self, req: &Request) -> Result<()> {
        if !(1..=MAX_CHOICES).contains(&req.n) {
            return Err(Error::invalid_argument(format!(
                "n = {}: must be in 1..={MAX_CHOICES}",
                req.n
            )));
        }
        if let Some(b) = req.best_of {
            if b < req.n || b > MAX_CHOICES {
                return Err(Error::invalid_argument(format!(
                    "best_of = {b}: must be at least n ({}) and at most {MAX_CHOICES}",
                    req.n
                )));
            }
        }
        let vocab = self.model_cfg.vocab_size;
        if let Some(&(bad, _)) = req
            .sampling
            .logit_bias
            .iter()
            .find(|&&(t, _)| t as usize >= vocab)
        {
            return Err(Error::invalid_argument(format!(
                "sampling parameter logit_bias: token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
    }

    /// One compiled constraint per sequence of `req` (none for free text). The compiler is
    /// built on the first constrained request.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the problem for a format that does not compile.
    fn compile_constraints(&self, req: &Request) -> Result<Vec<Constraint>> {
        if req.response_format.is_text() {
            return Ok(Vec::new());
        }
        let compiler = {
            let mut slot = self.constraints.lock();
            match &*slot {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(ConstraintCompiler::new(
                        &self.tokenizer,
                        &self.model_cfg.eos_token_ids,
                        self.model_cfg.vocab_size,
                    )?);
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        // Compiled once; the other choices start from copies.
        let Some(first) = compiler.compile(&req.response_format)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(req.num_sequences());
        out.extend((1..req.num_sequences()).map(|_| first.fork()));
        out.push(first);
        Ok(out)
    }

    /// Waits up to `timeout` for news about `id`: returns what arrived for one choice, merged
    /// into one delta (consecutive deltas of the same [`Output::index`]; a delta of another
    /// choice waits for the next poll), or `None` on timeout (a zero timeout does not block).
    /// After the request's last output ([`Output::done`]) the id is forgotten (polling it again
    /// is NOT_FOUND). Several threads may poll different ids; one id should be polled by one
    /// thread at a time.
    pub fn poll(&self, id: RequestId, timeout: Duration) -> Result<Option<Output>> {
        let ch = {
            let map = self.shared.outputs.lock();
            match map.get(&id) {
                Some(ch) => ch.clone(),
                None => {
                    return Err(Error::not_found(format!(
                        "request {id} is not known (finished, or never submitted)"
                    )))
                }
            }
        };
        let stashed = ch.stash.lock().take();
        let first = match stashed {
            Some(o) => Some(o),
            None if timeout.is_zero() => ch.rx.try_recv().ok(),
            None => ch.rx.recv_timeout(timeout).ok(),
        };
        let Some(mut out) = first else {
            return Ok(None);
        };
        while !out.is_final() {
            match ch.rx.try_recv() {
                Ok(more) if more.index == out.index => out.merge(more),
                Ok(other) => {
                    *ch.stash.lock() = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if out.done {
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

    /// Submits and waits for the whole result (convenience for tests and examples). For a
    /// request with `n > 1` use [`Engine::generate_all`].
    pub fn generate(&self, req: Request) -> Result<Output> {
        if req.n != 1 {
            return Err(Error::invalid_argument(format!(
                "generate returns one choice but the request asks for n = {}: use generate_all",
                req.n
            )));
        }
        let id = self.submit(req)?;
        self.wait(id)
    }

    /// Submits and waits for every choice (see [`Engine::wait_all`]).
    pub fn generate_all(&self, req: Request) -> Result<Vec<Output>> {
        let id = self.submit(req)?;
        self.wait_all(id)
    }

    /// Polls `id` until its last output and returns choice 0 merged (the only one of an `n = 1`
    /// request). A failed request returns its error.
    pub fn wait(&self, id: RequestId) -> Result<Output> {
        let mut all = self.wait_all(id)?;
        if all.is_empty() {
            return Ok(Output::new(id, Usage::default()));
        }
        Ok(all.swap_remove(0))
    }

    /// Polls `id` until its last output and returns every choice merged, in index order. A
    /// failed request returns its error.
    pub fn wait_all(&self, id: RequestId) -> Result<Vec<Output>> {
        let mut acc: Vec<Output> = Vec::new();
        loop {
            let Some(o) = self.poll(id, Duration::from_millis(100))? else {
                continue;
            };
            let done = o.done;
            if o.finish_reason == Some(FinishReason::Error) {
                if let Some(e) = &o.error {
                    return Err(e.clone());
                }
            }
            match acc.iter_mut().find(|a| a.index == o.index) {
                Some(a) => a.merge(o),
                None => acc.push(o),
            }
            if done {
                acc.sort_by_key(|a| a.index);
                return Ok(acc);
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
    for (&id, ch) in map.iter() {
        let mut o = Output::new(id, Usage::default());
        o.done = true;
        o.finish_reason = Some(FinishReason::Error);
        o.error = Some(err.clone());
        let _ = ch.tx.send(o);
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

/// The scheduler's tenant policy from the config: entries naming the served base model apply to
/// the base model, the others to adapters of that name.
fn tenant_policy(cfg: &EngineConfig) -> TenantPolicy {
    let base = cfg.served_name();
    let mut p = TenantPolicy {
        max_running_per_adapter: cfg.max_running_per_adapter,
        ..TenantPolicy::default()
    };
    for (name, &w) in &cfg.adapter_weights {
        if *name == base {
            p.base_weight = w;
        } else {
            p.weights.insert(name.clone(), w);
        }
    }
    for (name, &c) in &cfg.adapter_max_running {
        if *name == base {
            p.base_cap = c;
        } else {
            p.caps.insert(name.clone(), c);
        }
    }
    p
}
