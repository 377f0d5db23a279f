//! The paged KV cache ops (kernels/README.md, attention.cu): `kv_write` rounds K and V to bf16
//! into their slots, `attention_paged` runs causal GQA over the cache with the step's block
//! tables flattened to `[n_seqs, max_blocks]`.

use cudarc::driver::PushKernelArg;

use super::launch::{ceil, grid, int, long, Layout};
use super::step_meta::{flatten_block_tables, MetaKey};
use super::{CudaBackend, CudaBuf, CudaKvCache};
use crate::backend::{AttentionArgs, KvWriteArgs};

/// The largest `head_dim` `lpx_attention` takes.
const MAX_HEAD_DIM: usize = 256;

/// The first `rows` entries of `v`, padded with `pad` where `v` is shorter (a row without
/// metadata then points outside the cache and gets a NaN row, as on the CPU).
fn padded(v: &[u32], rows: usize, pad: u32) -> Vec<u32> {
    (0..rows)
        .map(|t| v.get(t).copied().unwrap_or(pad))
        .collect()
}

/// `lpx_attention`'s `window` argument: 0 for none, else the window (0 counts as 1).
fn window_arg(window: Option<usize>) -> i32 {
    window.map_or(0, |w| int(w.max(1)).unwrap_or(i32::MAX))
}

impl CudaBackend {
    pub(crate) fn op_kv_write(&self, cache: &mut CudaKvCache, w: KvWriteArgs<'_, CudaBuf>) {
        let geom = cache.geom;
        let kv_dim = geom.num_kv_heads * geom.head_dim;
        let nslots = geom.num_blocks * geom.block_size;
        let (Some(kc), Some(vc)) = (cache.k.get_mut(w.layer), cache.v.get_mut(w.layer)) else {
            return;
        };
        let (kl, vl) = (Layout::of(&w.k), Layout::of(&w.v));
        if kl.rows != vl.rows || !kl.fits(kv_dim) || !vl.fits(kv_dim) {
            return;
        }
        let rows = kl.rows.min(w.slot_mapping.len());
        if rows == 0 || kv_dim == 0 {
            return;
        }
        let (Some(ns), Some(kd), Some((_, ks, kcol)), Some((_, vs, vcol)), Some(r)) =
            (long(nslots), int(kv_dim), kl.ints(), vl.ints(), int(rows))
        else {
            return;
        };
        let mut scratch = self.scratch.lock();
        let items = [(MetaKey::SlotMapping, &w.slot_mapping[..rows])];
        let Some([slots]) = self.note("kv_write", scratch.meta.upload(&self.dev.stream, items))
        else {
            return;
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.kv_write);
        b.arg(kc).arg(vc).arg(&ns).arg(&kd);
        b.arg(&w.k.buf.data).arg(&ks).arg(&kcol);
        b.arg(&w.v.buf.data).arg(&vs).arg(&vcol);
        b.arg(slots).arg(&r);
        // SAFETY: lpx_kv_write(k_cache, v_cache, num_slots, kv_dim, k, k_stride, k_col, v,
        // v_stride, v_col, slot_mapping, rows): both caches hold num_slots*kv_dim bf16, the K and
        // V views fit with kv_dim columns (checked above), slot_mapping holds rows slots
        // (uploaded above; slots >= num_slots are skipped by the kernel); grid
        // (ceil(kv_dim/256), rows), block 256.
        unsafe { self.run("kv_write", b, grid(ceil(kv_dim, 256), rows, 1), (256, 1, 1)) };
    }

    pub(crate) fn op_attention(
        &self,
        a: AttentionArgs<'_, CudaBuf, CudaKvCache>,
        out: &mut CudaBuf,
    ) {
        let geom = a.cache.geom;
        let (nkv, hd, n_heads) = (geom.num_kv_heads, geom.head_dim, a.n_heads);
        let ql = Layout::of(&a.q);
        let q_dim = n_heads.checked_mul(hd);
        let shapes_ok = n_heads > 0
            && nkv > 0
            && n_heads.is_multiple_of(nkv)
            && matches!(q_dim, Some(d) if ql.fits(d))
            && matches!(q_dim.and_then(|d| d.checked_mul(ql.rows)), Some(n) if n <= out.len());
        let (Some(kc), Some(vc)) = (a.cache.k.get(a.layer), a.cache.v.get(a.layer)) else {
            return self.fill_nan(out);
        };
        if !shapes_ok {
            return self.fill_nan(out);
        }
        let rows = ql.rows;
        if rows == 0 || hd == 0 {
            return;
        }
        if hd > MAX_HEAD_DIM || !hd.is_multiple_of(2) {
            self.fail(
                "attention",
                crate::error::Error::unsupported(format!(
                    "head_dim {hd}: the CUDA attention kernel takes even head sizes up to {MAX_HEAD_DIM}"
                )),
            );
            return self.fill_nan(out);
        }
        let meta = &a.meta;
        let (tables, max_blocks) = flatten_block_tables(meta.block_tables);
        let n_seqs = meta.block_tables.len();
        let ints = (
            ql.ints(),
            int(n_heads),
            int(nkv),
            int(hd),
            long(geom.num_blocks),
            int(geom.block_size),
            int(max_blocks),
            int(n_seqs),
        );
        let (
            Some((r, qs, qc)),
            Some(nh),
            Some(nk),
            Some(d),
            Some(nb),
            Some(bs),
            Some(mb),
            Some(ns),
        ) = ints
        else {
            return self.fill_nan(out);
        };
        let row_seq = padded(meta.row_seq, rows, u32::MAX);
        let row_pos = padded(meta.row_pos, rows, 0);
        let mut scratch = self.scratch.lock();
        let items = [
            (MetaKey::RowSeq, &row_seq[..]),
            (MetaKey::RowPos, &row_pos[..]),
            (MetaKey::BlockTables, &tables[..]),
        ];
        let Some([dseq, dpos, dtables]) =
            self.note("attention", scratch.meta.upload(&self.dev.stream, items))
        else {
            return self.fill_nan(out);
        };
        let window = window_arg(a.window);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.attention);
        b.arg(&a.q.buf.data)
            .arg(&qs)
            .arg(&qc)
            .arg(&r)
            .arg(&nh)
            .arg(&nk)
            .arg(&d);
        b.arg(kc).arg(vc).arg(&nb).arg(&bs);
        b.arg(dseq).arg(dpos).arg(dtables).arg(&mb).arg(&ns);
        b.arg(&window).arg(&scale).arg(&mut out.data);
        // SAFETY: lpx_attention(q, q_stride, q_col, rows, n_heads, n_kv_heads, head_dim,
        // k_cache, v_cache, num_blocks, block_size, row_seq, row_pos, block_tables, max_blocks,
        // n_seqs, window, scale, out): q fits with n_heads*head_dim columns and out holds
        // rows*n_heads*head_dim values (checked above), the caches are this layer's
        // [num_blocks*block_size, kv_dim] bf16, the metadata holds rows entries and
        // n_seqs*max_blocks blocks (uploaded above; rows pointing outside get NaN in the
        // kernel), head_dim is even and <= 256; grid (n_heads, rows), block 128.
        unsafe { self.run("attention", b, grid(n_heads, rows, 1), (128, 1, 1)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_metadata_is_padded_to_point_outside_the_cache() {
        assert_eq!(padded(&[4, 5], 3, u32::MAX), vec![4, 5, u32::MAX]);
        assert_eq!(padded(&[4, 5, 6], 2, 0), vec![4, 5]);
    }

    #[test]
    fn window_zero_counts_as_one_and_none_is_zero() {
        assert_eq!(window_arg(None), 0);
        assert_eq!(window_arg(Some(0)), 1);
        assert_eq!(window_arg(Some(4096)), 4096);
        assert_eq!(window_arg(Some(usize::MAX)), i32::MAX);
    }
}
