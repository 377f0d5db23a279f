//! A side stream: bytes that the next ops will read from memory (the adapters of the
//! `lora_apply` calls after a base matmul), asked for a few cache lines at a time by the tasks of
//! a matmul whose loop is bound by arithmetic, so that the memory traffic runs under that
//! arithmetic instead of after it (a thread that asked for them all at once would wait for
//! them: a core has few outstanding misses).
//!
//! Each task of the matmul takes the share of the stream's lines in proportion to its weight
//! rows ([`SideStream::share`]) and, as it goes through its rows, asks for the share's lines
//! up to the fraction of rows it has done ([`SideShare::advance`]). A hint only: nothing reads
//! the lines architecturally, so no result changes.
//!
//! [`prefetch_all`] (every line of a byte range at once) is the backend's one loop over a
//! range's cache lines; the LoRA's segment prefetch and the attention's tile prefetch call it.

/// Bytes of a cache line.
const LINE: usize = 64;

/// Bytes of one core's L2 cache: what Linux reports for CPU 0 (`/sys/devices/system/cpu/cpu0/
/// cache/index*/`, the level-2 data or unified cache), 512 KiB when it reports none. Read once.
pub(crate) fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| read_l2_bytes().unwrap_or(512 << 10))
}

/// See [`l2_bytes`]; `None` when sysfs has no level-2 data or unified cache.
fn read_l2_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let idx = dir.join(format!("index{i}"));
        let read = |f: &str| std::fs::read_to_string(idx.join(f)).ok();
        let (level, kind) = (read("level")?, read("type")?);
        if level.trim() != "2" || kind.trim() == "Instruction" {
            return None;
        }
        parse_size(&read("size")?)
    })
}

/// A sysfs cache size (`"2048K"`, `"1M"`, `"524288"`) in bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = num.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// The byte ranges of a side stream. Borrows them for one matmul call, read by all its tasks
/// at once; each task owns its [`SideShare`].
#[derive(Debug, Default)]
pub(crate) struct SideStream<'a> {
    parts: Vec<&'a [u8]>,
    lines: usize,
}

impl<'a> SideStream<'a> {
    /// A stream over `parts`, in order.
    pub(crate) fn new(parts: Vec<&'a [u8]>) -> Self {
        let lines = parts.iter().map(|p| lines(p)).sum();
        Self { parts, lines }
    }

    /// Bytes of the cache lines the stream's parts touch.
    pub(crate) fn bytes(&self) -> usize {
        self.lines * LINE
    }

    /// The share of a task doing units `u0 .. u1` of `total` (weight rows): lines
    /// `lines · u0 / total .. lines · u1 / total`, so that the tasks of one call cover every
    /// line once.
    pub(crate) fn share(&self, u0: usize, u1: usize, total: usize) -> SideShare<'_> {
        let at = |u: usize| {
            if total == 0 {
                0
            } else {
                (self.lines as u128 * u.min(total) as u128 / total as u128) as usize
            }
        };
        let (start, end) = (at(u0), at(u1));
        // The part and line within it where the share starts.
        let (mut part, mut skip) = (0, start);
        while let Some(p) = self.parts.get(part) {
            let n = lines(p);
            if skip < n {
                break;
            }
            skip -= n;
            part += 1;
        }
        SideShare {
            stream: self,
            part,
            line: skip,
            done: 0,
            total: end.saturating_sub(start),
        }
    }
}

/// One task's lines of a [`SideStream`]; see [`SideStream::share`].
#[derive(Debug)]
pub(crate) struct SideShare<'a> {
    stream: &'a SideStream<'a>,
    /// Next line to ask for: line `line` of part `part`.
    part: usize,
    line: usize,
    /// Lines asked for so far, of `total`.
    done: usize,
    total: usize,
}

impl SideShare<'_> {
    /// Asks for the share's lines up to the fraction `done / of` of it (those not asked for
    /// yet). A hint: it reads nothing and cannot fault.
    #[inline]
    pub(crate) fn advance(&mut self, done: usize, of: usize) {
        if self.done >= self.total || of == 0 {
            return;
        }
        let upto = if done >= of {
            self.total
        } else {
            (self.total as u128 * done as u128 / of as u128) as usize
        };
        while self.done < upto {
            let Some(p) = self.stream.parts.get(self.part) else {
                self.done = self.total;
                return;
            };
            if self.line >= lines(p) {
                self.part += 1;
                self.line = 0;
                continue;
            }
            prefetch_line(&p[line_offset(p, self.line)..], false);
            self.line += 1;
            self.done += 1;
        }
    }
}

/// Asks for every cache line that `b` touches at once, into L1 with `l1`, else into L2 (a thread
/// that then reads them waits for the last less; see the module docs for why a side stream
/// spreads them out instead). A hint: it reads nothing and cannot fault.
#[inline(always)]
pub(crate) fn prefetch_all(b: &[u8], l1: bool) {
    for k in 0..lines(b) {
        prefetch_line(&b[line_offset(b, k)..], l1);
    }
}

/// Cache lines that `b` touches (it need not start on a line).
fn lines(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        (b.as_ptr() as usize % LINE + b.len()).div_ceil(LINE)
    }
}

/// The offset in `b` of a byte in its `k`-th line (`k < lines(b)`): its first byte, then the
/// first byte of each later line.
fn line_offset(b: &[u8], k: usize) -> usize {
    if k == 0 {
        0
    } else {
        k * LINE - b.as_ptr() as usize % LINE
    }
}

/// Asks L1 (`l1`) or L2 for the cache line holding the first byte of `b` (non-empty).
#[inline(always)]
fn prefetch_line(b: &[u8], l1: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let p = b.as_ptr() as *const i8;
        // SAFETY: `prefetcht0`/`prefetcht1` never fault and read no memory architecturally (the
        // address is inside `b` anyway); SSE is part of x86_64's baseline.
        unsafe {
            if l1 {
                _mm_prefetch::<_MM_HINT_T0>(p);
            } else {
                _mm_prefetch::<_MM_HINT_T1>(p);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (b, l1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares of any split cover every line of the stream exactly once (what `advance` walks).
    #[test]
    fn shares_cover_every_line_once() {
        let buf = [0u8; 1400];
        // Parts at every alignment: each touches the lines from its first to its last byte.
        let (a, b, c) = (&buf[3..1003], &buf[1100..1164], &buf[1200..1329]);
        let s = SideStream::new(vec![a, b, c]);
        let span = |p: &[u8]| {
            let s = p.as_ptr() as usize;
            (s + p.len() - 1) / LINE - s / LINE + 1
        };
        assert_eq!(s.bytes(), (span(a) + span(b) + span(c)) * LINE);
        for p in [a, b, c] {
            // Every line offset lies in the part and in a distinct line.
            let at: Vec<usize> = (0..lines(p))
                .map(|k| (p.as_ptr() as usize + line_offset(p, k)) / LINE)
                .collect();
            assert!((0..lines(p)).all(|k| line_offset(p, k) < p.len()));
            assert!(at.windows(2).all(|w| w[1] == w[0] + 1));
        }
        for tasks in [1usize, 2, 3, 7, 40] {
            let total = 37;
            let mut sum = 0;
            for t in 0..tasks {
                let (u0, u1) = (total * t / tasks, total * (t + 1) / tasks);
                let mut sh = s.share(u0, u1, total);
                let n = sh.total;
                sh.advance(1, 2);
                assert!(sh.done <= n);
                sh.advance(2, 2);
                assert_eq!(sh.done, n);
                sum += n;
            }
            assert_eq!(sum * LINE, s.bytes(), "{tasks} tasks");
        }
        // Cache sizes as sysfs writes them.
        assert_eq!(parse_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("524288"), Some(512 << 10));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("0K"), None);
        assert!(l2_bytes() >= 64 << 10);
        // An empty stream and an empty total ask for nothing.
        let e = SideStream::default();
        e.share(0, 5, 5).advance(5, 5);
        s.share(0, 0, 0).advance(1, 1);
    }
}
