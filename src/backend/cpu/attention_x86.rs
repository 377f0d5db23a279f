//! The attention's vector kernels (x86_64 only; callers check the CPU features at runtime): the
//! scores of query vectors against a transposed key tile, and the weighted sum of V over one
//! span of positions, each an AVX2 and an AVX-512 twin of the portable loops in `attention.rs`.
//!
//! Every output element is the same chain of fused multiply-adds in the same order as the
//! portable loop (see the module docs of `attention.rs`); the kernels only decide which
//! elements share a register load, so every path gives the same bits.

use std::arch::x86_64::*;

use super::attention::PvSpan;
use super::side_stream::prefetch_all;

/// Asks the cache to fetch every 64-byte line of each vector in `rows` (into L1 with `l1`,
/// else into L2). The K and V vectors of a KV head are one per cache slot, `kv_dim` values
/// apart, so a tile's vectors are far enough apart that the hardware prefetchers do not run
/// ahead of them. A hint only: it reads nothing architecturally and cannot fault.
#[inline(always)]
pub(crate) fn prefetch_rows<const W: usize>(rows: &[Option<&[f32]>; W], l1: bool) {
    for r in rows.iter().flatten() {
        prefetch_all(bytemuck::cast_slice(r), l1);
    }
}

/// Query vectors per AVX2 pass of [`tile_dots_avx2`]: 4 × 2 accumulators, 2 key vectors and a
/// broadcast fit the 16 registers.
const DOT_PASS: usize = 4;

/// The accumulators of pairs `c0 .. c0 + M` of [`tile_dots_avx2`] over every `d`.
///
/// # Safety
/// AVX2 and FMA must be available; `c0 + M <= N`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots_pass<const N: usize, const M: usize>(
    qt: &[[f32; N]],
    kt: &[[f32; 16]],
    c0: usize,
    out: &mut [[f32; 16]; N],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for (q, k) in qt.iter().zip(kt) {
        // SAFETY: k is a [f32; 16]: two 256-bit unaligned loads.
        let kv = unsafe {
            [
                _mm256_loadu_ps(k.as_ptr()),
                _mm256_loadu_ps(k.as_ptr().add(8)),
            ]
        };
        for (a, &x) in acc.iter_mut().zip(&q[c0..c0 + M]) {
            let b = _mm256_set1_ps(x);
            a[0] = _mm256_fmadd_ps(b, kv[0], a[0]);
            a[1] = _mm256_fmadd_ps(b, kv[1], a[1]);
        }
    }
    for (o, a) in out[c0..c0 + M].iter_mut().zip(acc) {
        // SAFETY: o is a [f32; 16]: two 256-bit unaligned stores.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}

/// AVX2 twin of the attention's `tile_dots`: lane `j` of result `c` is `fma` over `d` in order
/// of `qt[d][c] * kt[d][j]`, the same fused operations in the same order, so the same bits. The
/// query vectors go in passes of [`DOT_PASS`], so that the accumulators stay in registers (the
/// compiler's vectorisation of the portable loop spilled them for 8 query vectors).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn tile_dots_avx2<const N: usize>(qt: &[[f32; N]], kt: &[[f32; 16]]) -> [[f32; 16]; N] {
    let mut out = [[0f32; 16]; N];
    let mut c0 = 0;
    while c0 < N {
        let m = (N - c0).min(DOT_PASS);
        // SAFETY: AVX2 and FMA are enabled here; c0 + m <= N.
        unsafe {
            match m {
                4 => dots_pass::<N, 4>(qt, kt, c0, &mut out),
                3 => dots_pass::<N, 3>(qt, kt, c0, &mut out),
                2 => dots_pass::<N, 2>(qt, kt, c0, &mut out),
                _ => dots_pass::<N, 1>(qt, kt, c0, &mut out),
            }
        }
        c0 += m;
    }
    out
}

/// Slots that share each V load in [`pv_tile_avx2`]: 3 × 4 accumulators (32 dimensions each), 4
/// V vectors and a broadcast fit the 16 registers.
pub(crate) const PV_SLOTS_AVX2: usize = 3;

/// `out[o[c] + x] = fma(e_c(j), v_j[d0 + x], out[o[c] + x])` for `x < 64`, `j` in `ja..jb` in
/// order and every slot `c`, with `e_c(j) = *e[c].add(j)` and `v_j = vt[j]`: in two halves of
/// 32 dimensions, each slot's half in 4 registers for the whole range, the slots sharing each V
/// load.
///
/// # Safety
/// AVX2 and FMA must be available; `N <= PV_SLOTS_AVX2`; for every `c` and `j` in `ja..jb`,
/// `e[c].wrapping_add(j)` must be readable, `vt[j]` must hold at least `d0 + 64` values and
/// `out` at least `o[c] + 64`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pv_run_avx2<const N: usize>(
    out: &mut [f32],
    o: [usize; N],
    e: [*const f32; N],
    d0: usize,
    ja: usize,
    jb: usize,
    vt: &[&[f32]],
) {
    let jb = jb.min(vt.len());
    let ja = ja.min(jb);
    for h in [0, 32] {
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for (a, &oc) in acc.iter_mut().zip(&o) {
            for (x, v) in a.iter_mut().enumerate() {
                // SAFETY: out holds o[c] + 64 values (the caller's contract); loadu is
                // unaligned.
                *v = unsafe { _mm256_loadu_ps(out.as_ptr().add(oc + h + x * 8)) };
            }
        }
        for (k, v) in vt[ja..jb].iter().enumerate() {
            let j = ja + k;
            // SAFETY: v holds d0 + 64 values (the caller's contract); loadu is unaligned.
            let w: [__m256; 4] =
                std::array::from_fn(|x| unsafe { _mm256_loadu_ps(v.as_ptr().add(d0 + h + x * 8)) });
            for (a, &ec) in acc.iter_mut().zip(&e) {
                // SAFETY: e[c].wrapping_add(j) is readable (the caller's contract).
                let b = _mm256_set1_ps(unsafe { *ec.wrapping_add(j) });
                for (a, w) in a.iter_mut().zip(w) {
                    *a = _mm256_fmadd_ps(b, w, *a);
                }
            }
        }
        for (a, &oc) in acc.iter().zip(&o) {
            for (x, v) in a.iter().enumerate() {
                // SAFETY: as for the loads above; storeu is unaligned.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(oc + h + x * 8), *v) };
            }
        }
    }
}

/// AVX2 twin of the attention's weighted sum of V over one span of positions for `N` slots of
/// 64 dimensions (see [`PvSpan`]), accumulating into `out[o[c]..o[c] + 64]`: positions before
/// the slots' common range one slot at a time, the common range for all slots together when
/// they read the same dimensions (`N <= PV_SLOTS_AVX2`), then the rest one slot at a time. Each
/// slot's positions stay in order, so the same bits as the portable loop. Writes nothing when
/// the span does not fit its slices.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn pv_tile_avx2<const N: usize>(out: &mut [f32], scores: &[f32], sp: &PvSpan<'_, N>) {
    if !sp.fits(out, scores) {
        return;
    }
    let (o, d0, a, b, vt) = (sp.o, sp.d0, sp.a, sp.b, sp.vt);
    let e = sp.exps(scores);
    let (ja, jb) = sp.common();
    let joint = N <= PV_SLOTS_AVX2 && ja < jb && d0.iter().all(|&d| d == d0[0]);
    for c in 0..N {
        let to = if joint { ja } else { b[c] };
        // SAFETY: AVX2 and FMA are enabled here; a[c]..to lies in a[c]..b[c], for which
        // eb[c] + j (wrapping) indexes scores, vt[j] holds d0[c] + 64 values and out o[c] + 64
        // (`fits` above).
        unsafe { pv_run_avx2::<1>(out, [o[c]], [e[c]], d0[c], a[c], to, vt) };
    }
    if joint {
        // SAFETY: as above: ja..jb lies in every slot's a[c]..b[c], and N <= PV_SLOTS_AVX2.
        unsafe { pv_run_avx2::<N>(out, o, e, d0[0], ja, jb, vt) };
        for c in 0..N {
            // SAFETY: as above: jb..b[c] lies in a[c]..b[c].
            unsafe { pv_run_avx2::<1>(out, [o[c]], [e[c]], d0[c], jb, b[c], vt) };
        }
    }
}

/// AVX-512 twin of the attention's `tile_dots`: lane `j` of result `c` is `fma` over `d` in
/// order of `qt[d][c] * kt[d][j]`, the same fused operations in the same order, so the same
/// bits (written with intrinsics: the compiler vectorised the portable loop across `c` with
/// gathers).
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) fn tile_dots_avx512<const N: usize>(
    qt: &[[f32; N]],
    kt: &[[f32; 16]],
) -> [[f32; 16]; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for (q, k) in qt.iter().zip(kt) {
        // SAFETY: k is a [f32; 16], one 512-bit unaligned load.
        let kv = unsafe { _mm512_loadu_ps(k.as_ptr()) };
        for (a, &x) in acc.iter_mut().zip(q) {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(x), kv, *a);
        }
    }
    let mut out = [[0f32; 16]; N];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o is a [f32; 16], one 512-bit unaligned store.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// `acc[c] = fma(e_c(j), v_j[d0[c]..d0[c] + 64], acc[c])` for `j` in `ja..jb` in order and
/// every slot `c`, with `e_c(j) = *e[c].add(j)` and `v_j = vt[j]`, all slots sharing each V load.
///
/// # Safety
/// AVX-512F must be available; for every `c` and `j` in `ja..jb`, `e[c].wrapping_add(j)` must
/// be readable and `vt[j]` must hold at least `d0[c] + 64` values.
#[target_feature(enable = "avx2,fma,avx512f")]
#[inline]
unsafe fn pv_joint<const N: usize>(
    acc: &mut [[__m512; 4]; N],
    e: [*const f32; N],
    d0: [usize; N],
    ja: usize,
    jb: usize,
    vt: &[&[f32]],
) {
    // A local copy, so the accumulators stay in registers (not stored back every position).
    let mut r = *acc;
    let jb = jb.min(vt.len());
    let ja = ja.min(jb);
    if d0.iter().all(|&d| d == d0[0]) {
        // Every slot reads the same dimensions (one head's 64 per slot): load V once.
        for (k, v) in vt[ja..jb].iter().enumerate() {
            let j = ja + k;
            // SAFETY: the caller guarantees v holds d0[0] + 64 values; loadu is unaligned.
            let w: [__m512; 4] =
                std::array::from_fn(|x| unsafe { _mm512_loadu_ps(v.as_ptr().add(d0[0] + x * 16)) });
            for c in 0..N {
                // SAFETY: the caller guarantees e[c].wrapping_add(j) is readable.
                let ec = _mm512_set1_ps(unsafe { *e[c].wrapping_add(j) });
                for (a, w) in r[c].iter_mut().zip(w) {
                    *a = _mm512_fmadd_ps(ec, w, *a);
                }
            }
        }
        *acc = r;
        return;
    }
    for (k, v) in vt[ja..jb].iter().enumerate() {
        let j = ja + k;
        for c in 0..N {
            // SAFETY: the caller guarantees e[c].wrapping_add(j) is readable.
            let ec = _mm512_set1_ps(unsafe { *e[c].wrapping_add(j) });
            for (x, a) in r[c].iter_mut().enumerate() {
                // SAFETY: the caller guarantees v holds d0[c] + 64 values; loadu is unaligned.
                let w = unsafe { _mm512_loadu_ps(v.as_ptr().add(d0[c] + x * 16)) };
                *a = _mm512_fmadd_ps(ec, w, *a);
            }
        }
    }
    *acc = r;
}

/// AVX-512 twin of the attention's weighted sum of V over one span of positions for `N` slots
/// of 64 dimensions (see [`PvSpan`]): `acc[c] = fma(e[c][j],
/// v_j[d0[c]..d0[c] + 64], acc[c])` for `j` in `a[c]..b[c]` in order, with `acc[c]` read from
/// and written back to `out[o[c]..o[c] + 64]` (positions before the slots' common range one
/// slot at a time, the common range for all slots together, then the rest one slot at a time:
/// each slot's positions stay in order, so the same bits as the portable loop). Writes nothing
/// when the span does not fit its slices.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) fn pv_tile_avx512<const N: usize>(out: &mut [f32], scores: &[f32], sp: &PvSpan<'_, N>) {
    if !sp.fits(out, scores) {
        return;
    }
    let (o, d0, a, b, vt) = (sp.o, sp.d0, sp.a, sp.b, sp.vt);
    let e = sp.exps(scores);
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    for c in 0..N {
        for (x, v) in acc[c].iter_mut().enumerate() {
            // SAFETY: out holds o[c] + 64 values (checked above); loadu is unaligned.
            *v = unsafe { _mm512_loadu_ps(out.as_ptr().add(o[c] + x * 16)) };
        }
    }
    let (ja, jb) = sp.common();
    let one = |acc: &mut [__m512; 4], c: usize, from: usize, to: usize| {
        let mut one = [*acc];
        // SAFETY: for j in a[c]..b[c] (which from..to lies in), eb[c] + j (wrapping) indexes
        // scores and vt[j] holds d0[c] + 64 values (fits above).
        unsafe { pv_joint::<1>(&mut one, [e[c]], [d0[c]], from, to, vt) };
        *acc = one[0];
    };
    if ja < jb {
        for c in 0..N {
            one(&mut acc[c], c, a[c], ja);
        }
        // SAFETY: ja..jb lies in every slot's a[c]..b[c] (checked above).
        unsafe { pv_joint::<N>(&mut acc, e, d0, ja, jb, vt) };
        for c in 0..N {
            one(&mut acc[c], c, jb, b[c]);
        }
    } else {
        for c in 0..N {
            one(&mut acc[c], c, a[c], b[c]);
        }
    }
    for c in 0..N {
        for (x, v) in acc[c].iter().enumerate() {
            // SAFETY: out holds o[c] + 64 values (checked above); storeu is unaligned.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(o[c] + x * 16), *v) };
        }
    }
}
