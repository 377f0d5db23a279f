//! The choices of one request (`n`, `best_of`): where their outputs go, when the request is
//! done, and which sequences wait to share the first choice's prompt KV blocks.

use crossbeam_channel::Sender;

use super::request::{FinishReason, Output};
use super::sequence::SeqId;

/// One request's choices. Owned by the worker thread.
pub(crate) struct ChoiceGroup {
    /// Choices returned to the caller.
    n: usize,
    /// Sequences not yet ended.
    live: usize,
    /// With `best_of > n`: every choice's merged output, by sequence index, until all ended.
    held: Option<Vec<Option<Output>>>,
    /// The sequence that computes the prompt, and the others waiting to share its KV blocks.
    pub leader: SeqId,
    pub waiting: Vec<SeqId>,
    tx: Sender<Output>,
}

impl ChoiceGroup {
    /// A group of `sequences` sequences returning the best `n` (all of them when equal), led by
    /// `leader`; `waiting` share its prompt once computed.
    pub fn new(
        n: usize,
        sequences: usize,
        leader: SeqId,
        waiting: Vec<SeqId>,
        tx: Sender<Output>,
    ) -> Self {
        Self {
            n,
            live: sequences,
            held: (sequences > n).then(|| vec![None; sequences]),
            leader,
            waiting,
            tx,
        }
    }

    /// True once every sequence has ended.
    pub fn is_over(&self) -> bool {
        self.live == 0
    }

    /// Routes a delta of one of the group's sequences to the caller: streamed as is (the
    /// request's last one marked `done`), or with `best_of` held until every sequence ended,
    /// then the `n` best sent with indices `0..n`.
    pub fn emit(&mut self, mut out: Output) {
        let final_ = out.is_final();
        if final_ {
            self.live = self.live.saturating_sub(1);
        }
        let Some(held) = &mut self.held else {
            out.done = final_ && self.live == 0;
            // A closed receiver means the caller forgot the request; the worker goes on.
            let _ = self.tx.send(out);
            return;
        };
        match held.get_mut(out.index) {
            Some(Some(acc)) => acc.merge(out),
            Some(slot) => *slot = Some(out),
            None => {}
        }
        if self.live > 0 {
            return;
        }
        let mut all: Vec<Output> = held.drain(..).flatten().collect();
        // Best first: finished normally before cancelled or failed, then the highest mean
        // token log-probability, then the lower index.
        all.sort_by(|a, b| {
            rank_class(a)
                .cmp(&rank_class(b))
                .then(mean_logprob(b).total_cmp(&mean_logprob(a)))
                .then(a.index.cmp(&b.index))
        });
        all.truncate(self.n);
        let last = all.len().saturating_sub(1);
        for (i, mut o) in all.into_iter().enumerate() {
            o.index = i;
            o.done = i == last;
            let _ = self.tx.send(o);
        }
    }
}

fn rank_class(o: &Output) -> u8 {
    match o.finish_reason {
        Some(FinishReason::Stop | FinishReason::Length) => 0,
        _ => 1,
    }
}

/// Mean log-probability of a choice's generated tokens (OpenAI's `best_of` criterion).
fn mean_logprob(o: &Output) -> f64 {
    let n = o.usage.completion_tokens;
    if n == 0 {
        f64::NEG_INFINITY
    } else {
        o.cumulative_logprob / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Usage;

    fn out(index: usize, tokens: usize, cum: f64, finish: Option<FinishReason>) -> Output {
        let mut o = Output::new(
            7,
            Usage {
                prompt_tokens: 3,
                completion_tokens: tokens,
            },
        );
        o.index = index;
        o.cumulative_logprob = cum;
        o.finish_reason = finish;
        o
    }

    #[test]
    fn streams_and_marks_the_last_final_done() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut g = ChoiceGroup::new(2, 2, 1, vec![2], tx);
        g.emit(out(0, 1, -1.0, None));
        g.emit(out(1, 1, -1.0, Some(FinishReason::Stop)));
        g.emit(out(0, 2, -2.0, Some(FinishReason::Length)));
        let got: Vec<Output> = rx.try_iter().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got.iter().map(|o| (o.index, o.done)).collect::<Vec<_>>(),
            vec![(0, false), (1, false), (0, true)]
        );
        assert!(g.is_over());
    }

    #[test]
    fn best_of_holds_everything_and_returns_the_best_mean() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut g = ChoiceGroup::new(2, 3, 1, vec![], tx);
        g.emit(out(0, 1, -0.5, None));
        g.emit(out(0, 2, -4.0, Some(FinishReason::Stop))); // mean -2
        g.emit(out(1, 4, -2.0, Some(FinishReason::Length))); // mean -0.5
        g.emit(out(2, 1, -0.1, Some(FinishReason::Cancelled))); // best mean, cancelled
        let got: Vec<Output> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].index, got[0].done, got[0].usage.completion_tokens),
            (0, false, 4)
        );
        assert_eq!(
            (got[1].index, got[1].done, got[1].usage.completion_tokens),
            (1, true, 2)
        );
    }
}
