//! Packed weight matrices of the CPU backend: dense f32/bf16 panels, or ggml blocks kept as
//! read ([`QuantStack`]).

use crate::backend::quant_stack::QuantStack;
use crate::backend::reference::quant_block::{
    decode_row, dequant_row, has_min, is_kernel_type, BlockParams,
};
use crate::backend::reference::{check_quantized_parts, fused_shape};
use crate::backend::select::WeightPartLayout;
use crate::backend::WeightFormat;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorData};

/// Rows per panel of the packed layout (the matmul microkernels' weight tile).
pub(crate) const PANEL: usize = 4;
/// Columns per chunk of the packed layout (one AVX2 vector of f32).
pub(crate) const CHUNK: usize = 8;

/// Packed element storage in panels of [`PANEL`] rows: rows are zero-padded from `in` to `kp`
/// columns and from `out` to a multiple of `PANEL`; panel `p` holds rows `PANEL*p ..` with
/// their 8-column chunks interleaved, so element `(o, i)` is at
/// [`packed_index`]`(o, i, kp)`. A tile of `PANEL` rows is then read as one sequential stream,
/// which the hardware prefetcher follows (about 1.7x the DRAM bandwidth of `PANEL` separate
/// row streams on the reference machine).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WData {
    /// f32 values.
    F32(Vec<f32>),
    /// bf16 values as raw bits (the top 16 bits of the f32).
    BF16(Vec<u16>),
    /// ggml blocks exactly as read, in row segments of possibly different types (not panel
    /// packed: the quantized kernels decode whole rows).
    Quant(QuantStack),
}

/// A weight matrix `[out, in]` packed for the CPU kernels: panels of 4 rows with interleaved
/// 8-column chunks (see `WData`), zero-padded, in f32 or bf16; or ggml blocks (`kp == in`).
/// Immutable once built; shareable across threads.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    pub(crate) out: usize,
    pub(crate) inp: usize,
    pub(crate) kp: usize,
    pub(crate) data: WData,
}

impl CpuWeight {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }
    /// The storage format of a dense weight; `None` for one kept in ggml blocks.
    pub fn format(&self) -> Option<WeightFormat> {
        match self.data {
            WData::F32(_) => Some(WeightFormat::F32),
            WData::BF16(_) => Some(WeightFormat::BF16),
            WData::Quant(_) => None,
        }
    }
    /// The ggml blocks of a weight kept quantized.
    pub fn quant(&self) -> Option<&QuantStack> {
        match &self.data {
            WData::Quant(q) => Some(q),
            _ => None,
        }
    }
    /// Bytes of the packed rows: `out * kp * element size`, the column padding of each row
    /// included. The up to 3 all-zero rows that complete the last 4-row panel (none when `out`
    /// is a multiple of 4, as in every Llama projection) are not counted.
    /// A quantized weight reports the bytes of its blocks (the file's tensor bytes).
    pub fn bytes(&self) -> usize {
        let format = match &self.data {
            WData::F32(_) => WeightFormat::F32,
            WData::BF16(_) => WeightFormat::BF16,
            WData::Quant(q) => return q.bytes(),
        };
        dense_bytes(self.out, self.kp, format)
    }

    /// Row `r` widened to f32 into `dst[..in]`; false if `r` or `dst` is out of range.
    pub(crate) fn row_into(&self, r: usize, dst: &mut [f32]) -> bool {
        let Some(dst) = dst.get_mut(..self.inp) else {
            return false;
        };
        if r >= self.out {
            return false;
        }
        if let WData::Quant(q) = &self.data {
            return quant_row_into(q, r, dst);
        }
        for (c, d) in dst.chunks_mut(CHUNK).enumerate() {
            let start = packed_index(r, c * CHUNK, self.kp);
            let ok = match &self.data {
                WData::F32(v) => v
                    .get(start..start + d.len())
                    .map(|src| d.copy_from_slice(src)),
                WData::BF16(v) => v.get(start..start + d.len()).map(|src| {
                    for (d, &b) in d.iter_mut().zip(src) {
                        *d = bf16_bits_to_f32(b);
                    }
                }),
                WData::Quant(_) => None,
            };
            if ok.is_none() {
                return false;
            }
        }
        true
    }
}

/// Row `r` of `q` dequantized into `dst[..cols]` exactly as ggml's `dequantize_row_*`.
fn quant_row_into(q: &QuantStack, r: usize, dst: &mut [f32]) -> bool {
    let Some((ty, bytes)) = q.row(r) else {
        return false;
    };
    let cols = q.cols();
    let mut wq = vec![0i8; cols];
    let mut wp = vec![BlockParams::default(); cols / 32];
    if !decode_row(ty, bytes, &mut wq, &mut wp) {
        return false;
    }
    dequant_row(&wq, &wp, has_min(ty), &mut dst[..cols]);
    true
}

/// Columns of a dense packed row: `inp` zero-padded to whole [`CHUNK`]s.
fn padded_cols(inp: usize) -> usize {
    inp.div_ceil(CHUNK) * CHUNK
}

/// Bytes [`CpuWeight::bytes`] reports for a dense weight of `out` rows of `kp` padded columns
/// packed in `format` (f32 values unless bf16; saturating).
fn dense_bytes(out: usize, kp: usize, format: WeightFormat) -> usize {
    let elem = if format == WeightFormat::BF16 { 2 } else { 4 };
    out.saturating_mul(kp).saturating_mul(elem)
}

/// The bytes [`CpuWeight::bytes`] would report for [`pack`] of parts with these layouts in
/// `format`, computed from shapes and types alone (no data; for the capacity planner). Same
/// rules as `pack`: all parts in ggml blocks of kernel types are kept as they are; otherwise
/// everything is packed dense in `format`.
///
/// Errors, as `pack` gives them: INVALID_ARGUMENT for no parts or parts of different widths, a
/// dense part under a quantized format; UNSUPPORTED for a quantized part of a type without
/// kernels.
pub(crate) fn packed_bytes(parts: &[WeightPartLayout], format: WeightFormat) -> Result<usize> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid_argument("fused weight needs at least one part"))?;
    let mut out = 0usize;
    let mut quant_bytes = 0usize;
    let mut dense = None;
    for (k, p) in parts.iter().enumerate() {
        if p.cols != first.cols {
            return Err(Error::invalid_argument(format!(
                "fused weight part {k} has in = {}, part 0 has in = {}",
                p.cols, first.cols
            )));
        }
        out = out.saturating_add(p.rows);
        match p.quant {
            Some(ty) if !is_kernel_type(ty) => {
                return Err(Error::unsupported(format!(
                    "weight part {k} has type {ty} which the quantized kernels do not support"
                )))
            }
            Some(ty) => {
                quant_bytes =
                    quant_bytes.saturating_add(p.rows.saturating_mul(ty.row_bytes(p.cols)))
            }
            None => dense = dense.or(Some(k)),
        }
    }
    match dense {
        None => Ok(quant_bytes),
        Some(k) if format.is_quantized() => Err(Error::invalid_argument(format!(
            "weight format {} needs quantized tensors, but part {k} is dense",
            format.name()
        ))),
        Some(_) => Ok(dense_bytes(out, padded_cols(first.cols), format)),
    }
}

/// Index of element `(o, i)` (`i % 8 == 0` for the start of a chunk) in the packed layout of a
/// weight with `kp` padded columns.
#[inline(always)]
pub(crate) fn packed_index(o: usize, i: usize, kp: usize) -> usize {
    (o / PANEL) * PANEL * kp + (i / CHUNK) * PANEL * CHUNK + (o % PANEL) * CHUNK + i % CHUNK
}

/// Widens raw bf16 bits to f32.
#[inline(always)]
pub(crate) fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Rounds to nearest-even bf16 bits (NaN stays NaN).
fn f32_to_bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// Writes row `r` (`src`, `in` values) into the packed storage `d`; `d` was sized for it.
fn scatter_row<T: Copy>(d: &mut [T], r: usize, kp: usize, src: &[T]) {
    for (c, chunk) in src.chunks(CHUNK).enumerate() {
        let start = packed_index(r, c * CHUNK, kp);
        if let Some(dst) = d.get_mut(start..start + chunk.len()) {
            dst.copy_from_slice(chunk);
        }
    }
}

/// Packs `parts` (each `[out_i, in]`) stacked along `out` in `format`.
///
/// When every part is kept in ggml blocks of a kernel type, the blocks are stored as they are
/// (whatever `format`). When dense and quantized parts are mixed, the quantized ones are
/// dequantized (exactly, as ggml does) and everything is packed dense in `format`.
pub(crate) fn pack(parts: &[&HostTensor], format: WeightFormat) -> Result<CpuWeight> {
    let (out, inp) = fused_shape(parts)?;
    if let Some(q) = QuantStack::from_parts(parts)? {
        return Ok(CpuWeight {
            out,
            inp,
            kp: inp,
            data: WData::Quant(q),
        });
    }
    let kp = padded_cols(inp);
    let n = out
        .checked_next_multiple_of(PANEL)
        .and_then(|o| o.checked_mul(kp))
        .ok_or_else(|| {
            crate::error::Error::invalid_argument(format!("weight [{out}, {inp}] overflows"))
        })?;
    let data = match format {
        WeightFormat::F32 => {
            let mut d = vec![0f32; n];
            let mut r = 0;
            for p in parts {
                let vals = p.to_f32_vec();
                for src in vals.chunks_exact(inp) {
                    scatter_row(&mut d, r, kp, src);
                    r += 1;
                }
            }
            WData::F32(d)
        }
        WeightFormat::Q8_0 | WeightFormat::Q4K => {
            // Reached only when some part is dense (all-quantized parts are kept in their
            // blocks above), which a quantized format refuses.
            check_quantized_parts(parts, format)?;
            return pack(parts, WeightFormat::F32);
        }
        WeightFormat::BF16 => {
            let mut d = vec![0u16; n];
            let mut r = 0;
            for p in parts {
                let bits: Vec<u16> = match &p.data {
                    TensorData::BF16(v) => v.iter().map(|b| b.to_bits()).collect(),
                    _ => p.to_f32_vec().into_iter().map(f32_to_bf16_bits).collect(),
                };
                for src in bits.chunks_exact(inp) {
                    scatter_row(&mut d, r, kp, src);
                    r += 1;
                }
            }
            WData::BF16(d)
        }
    };
    Ok(CpuWeight { out, inp, kp, data })
}
