//! Sampling: per-request parameters, token selection and stop-string matching.
//!
//! Pure logic (no backend, no I/O). [`SamplingParams`] is validated at submission;
//! a [`Sampler`] is created per request and turns one logits row into a [`SampledToken`];
//! a [`StopMatcher`] per request holds back text that could still become a stop string.

mod constraint;
mod math;
mod nucleus;
mod params;
mod response_format;
mod sampler;
mod stop;

pub use constraint::{Constraint, ConstraintCompiler};
pub use params::{SamplingParams, MAX_LOGPROBS};
pub use response_format::ResponseFormat;
pub use sampler::{apply_penalties, mask_allows, prompt_logprob, SampledToken, Sampler};
pub use stop::{StopMatcher, StopResult};
