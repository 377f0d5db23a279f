//! Token selection for one request: penalties, greedy, temperature, top-k, top-p, min-p.
//!
//! Pipeline per step (see [`Sampler::sample`]):
//! 1. copy the logits row, NaN → −∞, add the request's `logit_bias`;
//! 2. [`apply_penalties`] over the tokens generated so far;
//! 3. the reported log-probabilities are the log-softmax of these *biased and penalised*
//!    logits, before the output constraint's mask, temperature, top-k, top-p and min-p (like
//!    OpenAI, which reports the model's distribution);
//! 4. with an output constraint, every token outside its mask drops to −∞;
//! 5. greedy (`temperature == 0` or `top_k == 1`): the argmax, ties → lowest id;
//! 6. otherwise divide by the temperature, keep the `top_k` best (ties → lowest id), then the
//!    smallest nucleus of probability ≥ `top_p` (at least one token), then drop tokens below
//!    `min_p` × the best probability, and draw from the renormalised rest with exactly one
//!    uniform number from the request's own ChaCha8 generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::math;
use super::nucleus::{self, by_logit};
use super::params::{SamplingParams, MAX_LOGPROBS};

/// The token chosen at one step, with its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The chosen token id.
    pub token: u32,
    /// log-softmax of the penalised logits (before temperature/filters) at `token`.
    pub logprob: f32,
    /// The `logprobs` most likely tokens under the same distribution as `logprob`, sorted by
    /// decreasing log-probability, ties by increasing id. Empty when `logprobs` is `None`.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Penalty settings with invalid values replaced by neutral ones.
#[derive(Debug, Clone, Copy)]
struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
}

impl Penalties {
    fn from_params(p: &SamplingParams) -> Self {
        let finite_or = |x: f32, d: f32| if x.is_finite() { x } else { d };
        let repetition = finite_or(p.repetition_penalty, 1.0);
        Self {
            repetition: if repetition > 0.0 { repetition } else { 1.0 },
            presence: finite_or(p.presence_penalty, 0.0),
            frequency: finite_or(p.frequency_penalty, 0.0),
        }
    }
    fn active(&self) -> bool {
        self.repetition != 1.0 || self.presence != 0.0 || self.frequency != 0.0
    }
}

/// Applies the penalties of `params` in place over the tokens `generated` so far.
///
/// For every distinct token `t` occurring `c ≥ 1` times in `generated` (ids outside `logits`
/// are ignored), in this order:
/// * repetition (HF/vLLM): `l[t] = l[t] / r` if `l[t] > 0`, else `l[t] * r`;
/// * frequency and presence (OpenAI): `l[t] -= frequency_penalty * c + presence_penalty`.
///
/// Only generated tokens are penalised (not the prompt). Non-finite or non-positive
/// `repetition_penalty` and non-finite presence/frequency penalties count as "off".
/// Allocates one scratch buffer; [`Sampler`] reuses its own instead.
pub fn apply_penalties(logits: &mut [f32], generated: &[u32], params: &SamplingParams) {
    let mut scratch = Vec::new();
    apply_penalties_with(
        logits,
        generated,
        Penalties::from_params(params),
        &mut scratch,
    );
}

fn apply_penalties_with(
    logits: &mut [f32],
    generated: &[u32],
    pen: Penalties,
    scratch: &mut Vec<u32>,
) {
    if !pen.active() || generated.is_empty() {
        return;
    }
    scratch.clear();
    scratch.extend_from_slice(generated);
    scratch.sort_unstable();
    for run in scratch.chunk_by(|a, b| a == b) {
        let Some(&token) = run.first() else { continue };
        let Some(l) = logits.get_mut(token as usize) else {
            continue;
        };
        if pen.repetition != 1.0 {
            *l = if *l > 0.0 {
                *l / pen.repetition
            } else {
                *l * pen.repetition
            };
        }
        *l -= pen.frequency * run.len() as f32 + pen.presence;
    }
}

/// The log-probability of `token` under the log-softmax of the raw `logits` row (NaN counts as
/// −∞; no bias, penalty or mask), and the `top` most likely tokens (at most [`MAX_LOGPROBS`]) with
/// theirs, most likely first, ties by lower id. The engine's prompt log-probabilities.
pub fn prompt_logprob(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let work: Vec<f32> = logits
        .iter()
        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
        .collect();
    let lse = log_sum_exp(&work);
    let lp = work
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&w| w - lse);
    let mut cand = Vec::new();
    (
        lp,
        top_logprobs(&work, top.min(MAX_LOGPROBS), lse, &mut cand),
    )
}

/// log Σ exp(w) of a row without NaN (its maximum when that is not finite).
fn log_sum_exp(work: &[f32]) -> f32 {
    let wmax = math::max(work);
    if wmax.is_finite() {
        wmax + math::sum_exp(work, wmax, 1.0).ln() as f32
    } else {
        wmax
    }
}

/// The `n` most likely tokens of `work` with their log-probabilities (`w - lse`), most likely
/// first, ties by lower id; `cand` is scratch.
fn top_logprobs(work: &[f32], n: usize, lse: f32, cand: &mut Vec<(f32, u32)>) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    top_n(work, n, cand);
    cand.iter().map(|&(w, id)| (id, w - lse)).collect()
}

/// Sampling settings with invalid values clamped to the nearest valid behaviour.
#[derive(Debug, Clone, Copy)]
struct Settings {
    greedy: bool,
    temperature: f32,
    top_k: usize,
    top_p: f64,
    min_p: f32,
    logprobs: usize,
    penalties: Penalties,
}

/// A token mask: bit `t % 32` of word `t / 32` set means token `t` may be chosen (the layout of
/// [`crate::sampling::Constraint::mask`]). Tokens past the mask's end are not allowed.
pub fn mask_allows(mask: &[u32], token: usize) -> bool {
    mask.get(token / 32)
        .is_some_and(|w| (w >> (token % 32)) & 1 == 1)
}

impl Settings {
    fn from_params(p: &SamplingParams) -> Self {
        let greedy = p.temperature.is_nan() || p.temperature <= 0.0 || p.top_k == 1;
        let temperature = if p.temperature.is_finite() {
            p.temperature
        } else {
            f32::MAX
        };
        let top_p = if p.top_p.is_nan() || p.top_p >= 1.0 {
            1.0
        } else {
            f64::from(p.top_p.max(0.0))
        };
        let min_p = if p.min_p.is_nan() {
            0.0
        } else {
            p.min_p.clamp(0.0, 1.0)
        };
        Self {
            greedy,
            temperature,
            top_k: p.top_k,
            top_p,
            min_p,
            logprobs: p.logprobs.unwrap_or(0).min(MAX_LOGPROBS),
            penalties: Penalties::from_params(p),
        }
    }
}

/// Chooses the tokens of one request. Create one per request; it owns the request's random
/// generator and scratch buffers (reused across steps, so steady-state sampling allocates only
/// the returned `top_logprobs`). `Send`, not shared between threads.
///
/// The generator is ChaCha8 seeded from `params.seed`, or the fallback when `None`; each
/// non-greedy step draws exactly one `f64` from it, so a request's tokens depend only on its
/// own logits, parameters and seed, never on the rest of the batch.
#[derive(Clone)]
pub struct Sampler {
    rng: ChaCha8Rng,
    settings: Settings,
    /// `logit_bias` entries, in the request's order.
    bias: Vec<(u32, f32)>,
    work: Vec<f32>,
    weights: Vec<f32>,
    cand: Vec<(f32, u32)>,
    bucket_sums: Vec<f64>,
    scratch: Vec<u32>,
}

impl std::fmt::Debug for Sampler {
    /// The settings only (not the scratch buffers).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler for one request. `params` should have passed [`SamplingParams::validate`];
    /// out-of-range values are clamped (NaN or negative temperature → greedy, top_p outside
    /// (0, 1] → nearest bound keeping at least one token, min_p clamped to [0, 1], logprobs to
    /// at most 20, invalid penalties → off). `request_seed_fallback` seeds the generator when
    /// `params.seed` is `None`.
    pub fn new(params: &SamplingParams, request_seed_fallback: u64) -> Self {
        Self::with_stream(params, request_seed_fallback, 0)
    }

    /// As [`Sampler::new`], drawing from stream `stream` of the seed's ChaCha8 generator (the
    /// engine gives choice `i` of a request stream `i`; stream 0 is [`Sampler::new`]'s).
    pub fn with_stream(params: &SamplingParams, request_seed_fallback: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed.unwrap_or(request_seed_fallback));
        rng.set_stream(stream);
        Self {
            rng,
            settings: Settings::from_params(params),
            bias: params
                .logit_bias
                .iter()
                .copied()
                .filter(|(_, b)| b.is_finite())
                .collect(),
            work: Vec::new(),
            weights: Vec::new(),
            cand: Vec::new(),
            bucket_sums: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Chooses the next token from one row of `logits` (length = vocabulary size), given the
    /// tokens `generated` so far by this request (for the penalties). See the module docs for
    /// the exact pipeline.
    ///
    /// `logits` must be non-empty; an empty row yields token 0 with log-probability −∞ (the
    /// engine never passes one). NaN logits count as −∞. If every logit is −∞ (or one is +∞)
    /// the argmax is returned and its log-probability may be NaN.
    pub fn sample(&mut self, logits: &[f32], generated: &[u32]) -> SampledToken {
        self.sample_masked(logits, generated, None)
    }

    /// As [`Sampler::sample`], choosing only among the tokens `mask` allows (see [`mask_allows`];
    /// `None` allows every token). The reported log-probabilities ignore the mask (step 3 of the
    /// module docs). If the mask allows no token the argmax of the unmasked row is returned.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        generated: &[u32],
        mask: Option<&[u32]>,
    ) -> SampledToken {
        if logits.is_empty() {
            return SampledToken {
                token: 0,
                logprob: f32::NEG_INFINITY,
                top_logprobs: Vec::new(),
            };
        }
        self.work.clear();
        self.work.extend(
            logits
                .iter()
                .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }),
        );
        for &(t, b) in &self.bias {
            if let Some(w) = self.work.get_mut(t as usize) {
                *w += b;
            }
        }
        apply_penalties_with(
            &mut self.work,
            generated,
            self.settings.penalties,
            &mut self.scratch,
        );
        let lse = log_sum_exp(&self.work);
        let top_logprobs = top_logprobs(&self.work, self.settings.logprobs, lse, &mut self.cand);
        let mut wmax = math::max(&self.work);
        if let Some(mask) = mask {
            let any = self
                .work
                .iter()
                .enumerate()
                .any(|(i, &w)| w > f32::NEG_INFINITY && mask_allows(mask, i));
            if any {
                for (i, w) in self.work.iter_mut().enumerate() {
                    if !mask_allows(mask, i) {
                        *w = f32::NEG_INFINITY;
                    }
                }
                wmax = math::max(&self.work);
            }
        }
        let best = self
            .work
            .iter()
            .position(|&w| w == wmax)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0);
        let token = if self.settings.greedy {
            best
        } else {
            // Exactly one draw per non-greedy step, whatever the row looks like.
            let u: f64 = self.rng.gen();
            if wmax.is_finite() {
                self.sample_stochastic(u, wmax).unwrap_or(best)
            } else {
                best
            }
        };
        // Masking leaves allowed tokens (the chosen one among them) unchanged, so this is the
        // log-probability under the unmasked row.
        let logprob = self
            .work
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&w| w - lse);
        SampledToken {
            token,
            logprob,
            top_logprobs,
        }
    }
    /// Temperature, top-k, top-p, min-p, then the inverse CDF at `u` in [0, 1). `wmax` is the
    /// finite maximum of `work`.
    fn sample_stochastic(&mut self, u: f64, wmax: f32) -> Option<u32> {
        let s = self.settings;
        let t = s.temperature;
        let work = &self.work;
        let v = work.len();
        // Probability up to normalisation; the best token has weight exactly 1.
        let weight = |w: f32| math::exp_nonpos((w - wmax) / t);
        let k = if s.top_k == 0 || s.top_k >= v {
            v
        } else {
            s.top_k
        };

        if k == v && s.top_p >= 1.0 {
            // Whole vocabulary in id order: no candidate list, no sort.
            self.weights.clear();
            self.weights.extend(work.iter().map(|&w| {
                let e = weight(w);
                if e >= s.min_p {
                    e
                } else {
                    0.0
                }
            }));
            return pick_blocked(u, &self.weights).and_then(|i| u32::try_from(i).ok());
        }

        let cand = &mut self.cand;
        // Small k: one insertion pass yields the candidates already sorted.
        let sorted = k <= SMALL_K;
        if sorted {
            top_n(work, k, cand);
        } else {
            cand.clear();
            for (i, &w) in work.iter().enumerate() {
                cand.push((w, u32::try_from(i).ok()?));
            }
            if k < v {
                cand.select_nth_unstable_by(k - 1, by_logit);
                cand.truncate(k);
            }
        }

        if s.top_p < 1.0 {
            let keep = nucleus::nucleus(cand, sorted, wmax, t, s.top_p, &mut self.bucket_sums);
            cand.truncate(keep.max(1));
        }

        if s.min_p > 0.0 {
            cand.retain(|&(w, _)| weight(w) >= s.min_p);
        }

        let total: f64 = cand.iter().map(|&(w, _)| f64::from(weight(w))).sum();
        pick(u, total, cand.iter().map(|&(w, id)| (id, weight(w))))
    }
}

/// Up to this `top_k`, candidates are found by one insertion pass instead of a selection.
const SMALL_K: usize = 64;

/// [`pick`] over a whole weight row (index = token id), skipping whole blocks by their sums.
fn pick_blocked(u: f64, weights: &[f32]) -> Option<usize> {
    let block_sums = || weights.chunks(BLOCK).map(math::sum_unit);
    let target = u * block_sums().sum::<f64>();
    let mut cum = 0.0f64;
    let mut last = None;
    for (b, sum) in block_sums().enumerate() {
        if sum > 0.0 {
            last = Some(b);
            if cum + sum > target {
                break;
            }
        }
        cum += sum;
    }
    // The crossing block (or, after rounding, the last block with weight).
    let b = last?;
    let block = weights.chunks(BLOCK).nth(b)?;
    pick_from(cum, target, block.iter().copied().enumerate()).map(|i| b * BLOCK + i)
}

/// Scans `items` from cumulative weight `cum` for the first that exceeds `target`; the last
/// positive one if none does.
fn pick_from<T: Copy>(
    mut cum: f64,
    target: f64,
    items: impl Iterator<Item = (T, f32)>,
) -> Option<T> {
    let mut last = None;
    for (item, e) in items {
        if e > 0.0 {
            cum += f64::from(e);
            last = Some(item);
            if cum > target {
                return Some(item);
            }
        }
    }
    last
}

const BLOCK: usize = 256;

/// Inverse-CDF draw: the first item whose cumulative weight exceeds `u * total`; the last item
/// with positive weight if rounding runs past the end.
fn pick<T: Copy>(u: f64, total: f64, items: impl Iterator<Item = (T, f32)>) -> Option<T> {
    pick_from(0.0, u * total, items)
}

/// The `n` largest entries of `work` as `(logit, id)` into `out`, by decreasing logit, ties by
/// increasing id. One pass; an entry is inserted only if it beats the current n-th.
fn top_n(work: &[f32], n: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    if n == 0 {
        return;
    }
    for (i, &w) in work.iter().enumerate() {
        let full = out.len() == n;
        if full && out.last().is_some_and(|&(lw, _)| w <= lw) {
            continue;
        }
        // Insert after every entry that is >= w, so equal values stay in id order.
        let at = out.partition_point(|&(tw, _)| tw >= w);
        if full {
            out.pop();
        }
        let Ok(id) = u32::try_from(i) else { break };
        out.insert(at.min(out.len()), (w, id));
    }
}
