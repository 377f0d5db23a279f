//! The machine's memory bandwidth, measured in the same run as the throughput it bounds.

use std::time::Instant;

/// Bytes copied per second by a 256 MiB `memcpy`, best of 5 (the memory traffic is twice that:
/// n read + n written).
pub fn copy_bandwidth_gbs() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    n as f64 / best / 1e9
}

/// Sums a slice with eight independent accumulators (vectorised by the compiler), so the loop is
/// bound by how fast memory delivers the bytes.
fn stream_sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    let mut s = tail.iter().fold(0u64, |s, &w| s.wrapping_add(w));
    for a in acc {
        s = s.wrapping_add(a);
    }
    s
}

/// Peak streaming-read bandwidth in bytes/s ÷ 1e9: `threads` threads each read their share of a
/// 512 MiB buffer (16x a 32 MiB last-level cache), best of `reps` passes (short passes, so that on
/// a shared machine some pass runs without being descheduled). This is what a memory-bound decode
/// step needs: every weight byte read once.
pub fn read_bandwidth_gbs(threads: usize, reps: usize) -> f64 {
    let words = (512usize << 20) / 8;
    // Distinct values so no page is shared copy-on-write zero memory.
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let share = words.div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let total = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(share)
                .map(|part| s.spawn(move || stream_sum(std::hint::black_box(part))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_sum_adds_every_word() {
        let v: Vec<u64> = (1..=1001).collect();
        assert_eq!(super::stream_sum(&v), 1001 * 1002 / 2);
    }
}
