//! SGMV segments (Punica / S-LoRA): one lane of a [`crate::backend::LoraBatch`] grouped by
//! adapter slot, so that `lpx_lora_shrink` / `lpx_lora_expand` read each module's A and B once
//! for all the rows that use it (kernels/README.md, lora.cu).
//!
//! Pure host logic, unit-tested on the CPU. A row's arithmetic in the kernels depends only on
//! its own segment's module (its rank and offsets), never on which other rows share the
//! segment, so grouping keeps batch invariance.

use std::collections::BTreeMap;

/// One stored module as the kernels see it: rank, the adapter's scale (`alpha / r`) and the
/// arena offsets (elements: bf16 weights) of its A `[rank, in]` and B `[out, rank]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegModule {
    /// Rank.
    pub rank: usize,
    /// The adapter's scale.
    pub scale: f32,
    /// Offset of A in the arena.
    pub a_off: usize,
    /// Offset of B in the arena.
    pub b_off: usize,
}

/// The segments of one lane: segment `g` is rows `rows[start[g] .. start[g+1]]`, all using the
/// module at `a_off[g]` / `b_off[g]` with rank `rank[g]` and scale `scale[g]` (the arrays
/// `lpx_lora_shrink` / `lpx_lora_expand` take).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segments {
    /// Segment starts into `rows` (`n_seg + 1` entries when there are segments).
    pub start: Vec<i32>,
    /// Step row indices, grouped by segment, ascending within one.
    pub rows: Vec<i32>,
    /// A offset per segment.
    pub a_off: Vec<i64>,
    /// B offset per segment.
    pub b_off: Vec<i64>,
    /// Rank per segment.
    pub rank: Vec<i32>,
    /// Adapter scale per segment.
    pub scale: Vec<f32>,
    /// The arena slot of each segment.
    pub slot: Vec<usize>,
}

impl Segments {
    /// Segments.
    pub fn len(&self) -> usize {
        self.rank.len()
    }

    /// True when no row uses a module.
    pub fn is_empty(&self) -> bool {
        self.rank.is_empty()
    }
}

/// Groups the first `rows` rows of a lane by slot, in ascending slot order. A row is left out
/// when it is past `slots`, its slot is negative, `module(slot)` is `None` (the slot has no
/// module for this layer and target) or `row_ok(row)` is false (its x or y columns fall outside
/// the buffers). The caller guarantees `rows` and every offset fit the kernels' integer types.
pub fn build_segments(
    slots: &[i32],
    rows: usize,
    module: impl Fn(usize) -> Option<SegModule>,
    row_ok: impl Fn(usize) -> bool,
) -> Segments {
    let mut by_slot: BTreeMap<usize, (SegModule, Vec<i32>)> = BTreeMap::new();
    for (t, &s) in slots.iter().enumerate().take(rows) {
        if s < 0 || !row_ok(t) {
            continue;
        }
        let s = s as usize;
        if let Some((_, rows)) = by_slot.get_mut(&s) {
            rows.push(t as i32);
        } else if let Some(m) = module(s) {
            by_slot.insert(s, (m, vec![t as i32]));
        }
    }
    let mut seg = Segments::default();
    seg.start.push(0);
    for (s, (m, rows)) in by_slot {
        seg.slot.push(s);
        seg.rows.extend(rows);
        seg.start.push(seg.rows.len() as i32);
        seg.a_off.push(m.a_off as i64);
        seg.b_off.push(m.b_off as i64);
        seg.rank.push(m.rank as i32);
        seg.scale.push(m.scale);
    }
    if seg.rank.is_empty() {
        seg.start.clear();
    }
    seg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(slot: usize) -> SegModule {
        SegModule {
            rank: slot + 1,
            scale: 0.5 * slot as f32,
            a_off: 1000 * slot,
            b_off: 1000 * slot + 100,
        }
    }

    #[test]
    fn rows_are_grouped_by_slot_in_slot_order() {
        let s = build_segments(&[2, -1, 0, 2, 0, 1], 6, |s| Some(m(s)), |_| true);
        assert_eq!(s.start, vec![0, 2, 3, 5]);
        assert_eq!(s.rows, vec![2, 4, 5, 0, 3]);
        assert_eq!(s.rank, vec![1, 2, 3]);
        assert_eq!(s.a_off, vec![0, 1000, 2000]);
        assert_eq!(s.b_off, vec![100, 1100, 2100]);
        assert_eq!(s.scale, vec![0.0, 0.5, 1.0]);
        assert_eq!(s.slot, vec![0, 1, 2]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn rows_without_a_module_or_outside_the_buffers_are_skipped() {
        // Slot 1 has no module here; row 3 does not fit; rows past `rows` and past the lane
        // use no adapter.
        let s = build_segments(&[0, 1, 0, 0, 0], 4, |s| (s != 1).then(|| m(s)), |t| t != 3);
        assert_eq!(s.start, vec![0, 2]);
        assert_eq!(s.rows, vec![0, 2]);
        let short = build_segments(&[0], 3, |s| Some(m(s)), |_| true);
        assert_eq!(short.rows, vec![0]);
    }

    #[test]
    fn a_lane_of_base_rows_has_no_segments() {
        let s = build_segments(&[-1, -1], 2, |s| Some(m(s)), |_| true);
        assert!(s.is_empty());
        assert!(s.start.is_empty() && s.rows.is_empty());
    }
}
