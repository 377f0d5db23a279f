//! The rows of one step (DESIGN.md 1.3 "build `StepInput` + `LoraBatch`"): every planned chunk's
//! tokens, positions, KV slots and adapter slot, and what each logits row is for: a sequence
//! that samples after the step, or a prompt position whose log-probability was asked for.

use std::collections::HashMap;

use super::sequence::{SeqId, Sequence};
use crate::backend::{AttnMeta, LoraBatch};
use crate::error::{Error, Result};
use crate::model::llama::StepInput;
use crate::sched::Chunk;

/// One step's model input, borrowing the sequences' block tables. Built and consumed by the
/// worker thread within one step.
pub(super) struct StepBatch<'a> {
    tokens: Vec<u32>,
    row_seq: Vec<u32>,
    row_pos: Vec<u32>,
    slot_mapping: Vec<u32>,
    block_tables: Vec<&'a [u32]>,
    logit_rows: Vec<u32>,
    lora: LoraBatch,
    /// What each logits row of the step is for, in row order.
    pub uses: Vec<RowUse>,
}

/// What one logits row of a step is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowUse {
    /// The sequence's chunk completes its known tokens: it samples one token from this row.
    Sample(SeqId),
    /// The log-probability of prompt token `pos + 1` of the sequence (`prompt_logprobs`).
    Prompt(SeqId, usize),
}

impl<'a> StepBatch<'a> {
    /// Lays out `chunks` (row order) of the sequences in `seqs`, whose KV blocks of
    /// `block_size` tokens are already reserved. Errors (INTERNAL) name the sequence when a chunk
    /// refers to an unknown sequence, a position past its tokens or one without a KV slot.
    pub fn build(
        chunks: &[Chunk],
        seqs: &'a HashMap<SeqId, Sequence>,
        block_size: usize,
    ) -> Result<Self> {
        let rows: usize = chunks.iter().map(|c| c.len).sum();
        let mut b = Self {
            tokens: Vec::with_capacity(rows),
            row_seq: Vec::with_capacity(rows),
            row_pos: Vec::with_capacity(rows),
            slot_mapping: Vec::with_capacity(rows),
            block_tables: Vec::with_capacity(chunks.len()),
            logit_rows: Vec::new(),
            lora: LoraBatch::default(),
            uses: Vec::new(),
        };
        // Lanes needed: the most adapters any sequence of the step mixes (0: all base).
        let lanes = chunks
            .iter()
            .filter_map(|c| seqs.get(&c.id).map(|s| s.slots.len()))
            .max()
            .unwrap_or(0);
        let mixing = chunks.iter().any(|c| {
            seqs.get(&c.id)
                .is_some_and(|s| s.adapters.iter().any(|a| a.scale != 1.0))
        });
        for (k, c) in chunks.iter().enumerate() {
            let seq = seqs
                .get(&c.id)
                .ok_or_else(|| Error::internal(format!("planned unknown sequence {}", c.id)))?;
            for p in c.start..c.start + c.len {
                let tok = *seq.tokens.get(p).ok_or_else(|| {
                    Error::internal(format!("position {p} past sequence {}", c.id))
                })?;
                let slot = seq.sched.table.slot(p, block_size).ok_or_else(|| {
                    Error::internal(format!("no KV slot for position {p} of sequence {}", c.id))
                })?;
                b.tokens.push(tok);
                b.row_seq.push(k as u32);
                b.row_pos.push(p as u32);
                b.slot_mapping.push(slot);
                if seq.wants_prompt_logprob(p) {
                    b.logit_rows.push((b.tokens.len() - 1) as u32);
                    b.uses.push(RowUse::Prompt(c.id, p));
                }
            }
            if c.start + c.len == seq.sched.total_tokens {
                b.logit_rows.push((b.tokens.len() - 1) as u32);
                b.uses.push(RowUse::Sample(c.id));
            }
            b.block_tables.push(seq.sched.table.blocks());
            if lanes > 0 {
                b.push_lora(seq, c.len, lanes, mixing);
            }
        }
        Ok(b)
    }

    /// Appends `len` rows of `seq` to the step's adapter lanes (`lanes` of them; per-row scales
    /// only when some row of the step mixes at a scale other than 1).
    fn push_lora(&mut self, seq: &Sequence, len: usize, lanes: usize, mixing: bool) {
        let b = &mut self.lora;
        if b.mix.len() + 1 < lanes {
            b.mix.resize_with(lanes - 1, Default::default);
        }
        for k in 0..lanes {
            let slot = seq.slots.get(k).map_or(-1, |&s| s as i32);
            let scale = seq.adapters.get(k).map_or(1.0, |a| a.scale);
            let (slots, scales) = match k.checked_sub(1).and_then(|j| b.mix.get_mut(j)) {
                Some(lane) => (&mut lane.slot, &mut lane.scale),
                None => (&mut b.token_slot, &mut b.token_scale),
            };
            slots.extend(std::iter::repeat_n(slot, len));
            if mixing {
                scales.extend(std::iter::repeat_n(scale, len));
            }
        }
    }

    /// Token rows in the step.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// The model's view of the batch.
    pub fn input(&self) -> StepInput<'_> {
        StepInput {
            tokens: &self.tokens,
            meta: AttnMeta {
                row_seq: &self.row_seq,
                row_pos: &self.row_pos,
                slot_mapping: &self.slot_mapping,
                block_tables: &self.block_tables,
            },
            logit_rows: &self.logit_rows,
            lora: &self.lora,
        }
    }
}
