//! Top-p (nucleus) selection without sorting the whole vocabulary.

use super::math::exp_nonpos;
use std::cmp::Ordering;

/// Buckets over the scaled log-weight range `[-BUCKET_RANGE, 0]`.
const NUM_BUCKETS: usize = 1024;
const BUCKET_RANGE: f32 = 88.0;

/// Decreasing logit, ties by increasing id.
pub(crate) fn by_logit(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Reorders `cand` (`(logit, id)` pairs, logits without NaN, `wmax` their finite maximum) so
/// that its first `n` entries are the smallest set of most likely tokens whose probability
/// (weights `exp((logit - wmax) / temperature)`) reaches `top_p` of the total, and returns `n`
/// (≥ 1 unless `cand` is empty). Ties rank by increasing id.
///
/// When `cand` is already sorted (`sorted`), this is one scan. Otherwise entries are put in
/// `NUM_BUCKETS` buckets by log-weight (monotone in the logit); one pass sums each bucket,
/// every bucket above the boundary bucket is kept whole, and only the boundary bucket is sorted.
/// `sums` is scratch space.
pub(crate) fn nucleus(
    cand: &mut [(f32, u32)],
    sorted: bool,
    wmax: f32,
    temperature: f32,
    top_p: f64,
    sums: &mut Vec<f64>,
) -> usize {
    let z = |w: f32| (w - wmax) / temperature;
    let len = cand.len();
    if sorted {
        let total: f64 = cand.iter().map(|&(w, _)| f64::from(exp_nonpos(z(w)))).sum();
        return prefix_reaching(cand, 0.0, top_p * total, &z).unwrap_or(len);
    }
    let bucket = |w: f32| -> usize {
        let zw = z(w);
        // `!(zw > -RANGE)` also holds for NaN and -inf.
        if zw.is_nan() || zw <= -BUCKET_RANGE {
            NUM_BUCKETS - 1
        } else {
            // zw in (-RANGE, 0]: the cast truncates a value in [0, NUM_BUCKETS).
            ((-zw * (NUM_BUCKETS as f32 / BUCKET_RANGE)) as usize).min(NUM_BUCKETS - 1)
        }
    };
    sums.clear();
    sums.resize(NUM_BUCKETS, 0.0);
    let mut total = 0.0f64;
    for &(w, _) in cand.iter() {
        let e = f64::from(exp_nonpos(z(w)));
        if let Some(s) = sums.get_mut(bucket(w)) {
            *s += e;
        }
        total += e;
    }
    let target = top_p * total;
    // The boundary bucket: the first whose cumulative sum reaches the target.
    let mut before = 0.0f64;
    let mut boundary = NUM_BUCKETS - 1;
    for (b, &s) in sums.iter().enumerate() {
        if before + s >= target {
            boundary = b;
            break;
        }
        before += s;
    }
    // Entries above the boundary first, then the boundary bucket, then the rest.
    let above = partition(cand, |w| bucket(w) < boundary);
    let at = above
        + cand
            .get_mut(above..)
            .map_or(0, |rest| partition(rest, |w| bucket(w) == boundary));
    let Some(edge) = cand.get_mut(above..at) else {
        return len;
    };
    edge.sort_unstable_by(by_logit);
    match prefix_reaching(edge, before, target, &z) {
        Some(n) => above + n,
        // Rounding: the bucket sums reached the target but the element sums did not.
        None => at.max(1),
    }
}

/// The length of the shortest prefix of `sorted` whose weights, added to `start`, reach
/// `target`.
fn prefix_reaching(
    sorted: &[(f32, u32)],
    start: f64,
    target: f64,
    z: &impl Fn(f32) -> f32,
) -> Option<usize> {
    let mut cum = start;
    for (j, &(w, _)) in sorted.iter().enumerate() {
        cum += f64::from(exp_nonpos(z(w)));
        if cum >= target {
            return Some(j + 1);
        }
    }
    None
}

/// Moves the entries whose logit satisfies `pred` to the front; returns their count.
fn partition(xs: &mut [(f32, u32)], pred: impl Fn(f32) -> bool) -> usize {
    let mut front = 0;
    for i in 0..xs.len() {
        if xs.get(i).is_some_and(|&(w, _)| pred(w)) {
            xs.swap(front, i);
            front += 1;
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: sort everything, take the shortest prefix reaching `top_p`.
    fn reference(cand: &[(f32, u32)], wmax: f32, t: f32, top_p: f64) -> Vec<u32> {
        let mut all = cand.to_vec();
        all.sort_by(by_logit);
        let z = |w: f32| (w - wmax) / t;
        let total: f64 = all.iter().map(|&(w, _)| f64::from(exp_nonpos(z(w)))).sum();
        let n = prefix_reaching(&all, 0.0, top_p * total, &z).unwrap_or(all.len());
        let mut ids: Vec<u32> = all[..n.max(1)].iter().map(|e| e.1).collect();
        ids.sort();
        ids
    }

    #[test]
    fn bucketed_nucleus_equals_full_sort() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut sums = Vec::new();
        for case in 0..60 {
            let v = 1 + case * 97;
            // Coarse values so that ties occur, including across bucket edges.
            let cand: Vec<(f32, u32)> = (0..v as u32)
                .map(|i| (((next() * 40.0).round() - 30.0) * 0.25, i))
                .collect();
            let wmax = cand.iter().map(|e| e.0).fold(f32::NEG_INFINITY, f32::max);
            for (t, top_p) in [(1.0, 0.9), (0.7, 0.5), (2.0, 0.05), (1.0, 0.999)] {
                let want = reference(&cand, wmax, t, top_p);
                let mut work = cand.clone();
                let n = nucleus(&mut work, false, wmax, t, top_p, &mut sums);
                let mut got: Vec<u32> = work[..n].iter().map(|e| e.1).collect();
                got.sort();
                assert_eq!(got, want, "case {case} t {t} top_p {top_p}");
            }
        }
    }
}
