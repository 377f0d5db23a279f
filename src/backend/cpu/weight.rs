//! Packed weight matrices of the CPU backend: dense f32/bf16 panels, or ggml blocks kept as
//! read ([`QuantStack`]; most types possibly in the AVX2 path's step order, the same bytes).

use super::quant::step_order;
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

/// How a dense weight's elements are arranged: panels of [`Layout::panel`] rows whose
/// [`Layout::chunk`]-column chunks are interleaved. Rows are zero-padded from `in` to `kp`
/// columns (a multiple of the chunk) and from `out` to a multiple of the panel; panel `p` holds
/// rows `panel*p ..`, chunk by chunk, so element `(o, i)` is at [`Layout::index`]`(o, i, kp)`.
/// A tile of a panel's rows is then read as one sequential stream, which the hardware
/// prefetcher follows (about 1.7x the DRAM bandwidth of separate row streams on the reference
/// machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// 4-row panels of 8-column chunks ([`PANEL`], [`CHUNK`]): the AVX2/FMA and AVX-512 BF16
    /// kernels' weight tile.
    Panels,
    /// 16-row panels of 32-column chunks: each chunk of a panel is one AMX B tile (1 KiB of
    /// bf16) in the pair-interleaved form, its row `p` holding columns `2p` and `2p + 1` of each
    /// of the 16 rows in turn, for the AMX kernel (`amx.rs`).
    AmxTiles,
}

impl Layout {
    /// Rows per panel.
    pub(crate) const fn panel(self) -> usize {
        match self {
            Self::Panels => PANEL,
            Self::AmxTiles => 16,
        }
    }

    /// Columns per chunk.
    pub(crate) const fn chunk(self) -> usize {
        match self {
            Self::Panels => CHUNK,
            Self::AmxTiles => 32,
        }
    }

    /// Columns of a row that lie next to each other in the packed storage: a chunk's row, or a
    /// pair in the AMX tiles.
    pub(crate) const fn run(self) -> usize {
        match self {
            Self::Panels => CHUNK,
            Self::AmxTiles => 2,
        }
    }

    /// Index of element `(o, i)` in the packed storage of a weight with `kp` padded columns.
    #[inline(always)]
    pub(crate) const fn index(self, o: usize, i: usize, kp: usize) -> usize {
        let (p, c) = (self.panel(), self.chunk());
        let within = match self {
            Self::Panels => (o % p) * c + i % c,
            // Row `(i % c) / 2` of the tile, pair `o % p` of that row, element `i % 2`.
            Self::AmxTiles => (i % c) / 2 * 2 * p + (o % p) * 2 + i % 2,
        };
        (o / p) * p * kp + (i / c) * p * c + within
    }

    /// Columns of a packed row: `inp` zero-padded to whole chunks.
    pub(crate) const fn padded_cols(self, inp: usize) -> usize {
        inp.div_ceil(self.chunk()) * self.chunk()
    }
}

/// Packed element storage in the weight's [`Layout`].
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

/// A weight matrix `[out, in]` packed for the CPU kernels: panels with interleaved column
/// chunks (see [`Layout`]), zero-padded, in f32 or bf16; or ggml blocks (`kp == in`).
/// Immutable once built; shareable across threads.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    pub(crate) out: usize,
    pub(crate) inp: usize,
    pub(crate) kp: usize,
    /// The arrangement of dense data (meaningless for ggml blocks).
    pub(crate) layout: Layout,
    pub(crate) data: WData,
    /// Rows of the types with a step order (Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
    /// Q8_0) are in it (`quant::step_order`); false for dense data and blocks as read.
    pub(crate) steps: bool,
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
    /// The blocks of a weight kept quantized: as ggml wrote them, except that the Q4_K, Q5_K,
    /// Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and Q8_0 rows of a weight in the step order
    /// ([`CpuWeight::is_step_order`]) have their bytes rearranged within each super-block (the
    /// K-quants) or group of 8 blocks (the same bytes in number; `row_into` reads them).
    pub fn quant(&self) -> Option<&QuantStack> {
        match &self.data {
            WData::Quant(q) => Some(q),
            _ => None,
        }
    }
    /// Bytes of the packed rows: `out * kp * element size`, the column padding of each row
    /// included. The all-zero rows that complete the last panel (none when `out` is a multiple
    /// of the panel, as in every Llama projection) are not counted.
    /// A quantized weight reports the bytes of its blocks (the file's tensor bytes).
    pub fn bytes(&self) -> usize {
        let format = match &self.data {
            WData::F32(_) => WeightFormat::F32,
            WData::BF16(_) => WeightFormat::BF16,
            WData::Quant(q) => return q.bytes(),
        };
        dense_bytes(self.out, self.kp, format)
    }

    /// Whether the rows of the types with a step order (see [`CpuWeight::quant`]) are in the
    /// AVX2 path's step order (a backend on that path packs them so).
    pub fn is_step_order(&self) -> bool {
        self.steps
    }

    /// The same weight with the rows of the types with a step order in it
    /// (`quant::step_order`), which the AVX2 quantized path reads fastest; unchanged when
    /// dense or already so.
    pub(crate) fn into_steps(mut self) -> Self {
        if let (WData::Quant(q), false) = (&mut self.data, self.steps) {
            step_order::to_steps(q);
            self.steps = true;
        }
        self
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
            return quant_row_into(q, self.steps, r, dst);
        }
        let run = self.layout.run();
        for (c, d) in dst.chunks_mut(run).enumerate() {
            let start = self.layout.index(r, c * run, self.kp);
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

/// Row `r` of `q` dequantized into `dst[..cols]` exactly as ggml's `dequantize_row_*`;
/// `steps`: rows of the types with a step order are in it (see [`CpuWeight::steps`]).
fn quant_row_into(q: &QuantStack, steps: bool, r: usize, dst: &mut [f32]) -> bool {
    let Some((ty, bytes)) = q.row(r) else {
        return false;
    };
    let mut ggml = Vec::new();
    let bytes = if steps && step_order::has_steps(ty) {
        if !step_order::row_from_steps(ty, bytes, &mut ggml) {
            return false;
        }
        &ggml[..]
    } else {
        bytes
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

/// Bytes [`CpuWeight::bytes`] reports for a dense weight of `out` rows of `kp` padded columns
/// packed in `format` (f32 values unless bf16; saturating).
fn dense_bytes(out: usize, kp: usize, format: WeightFormat) -> usize {
    let elem = if format == WeightFormat::BF16 { 2 } else { 4 };
    out.saturating_mul(kp).saturating_mul(elem)
}

/// The bytes [`CpuWeight::bytes`] would report for [`pack`] of parts with these layouts in
/// `format`, computed from shapes and types alone (no data; for the capacity planner). Same
/// rules as `pack`: all parts in ggml blocks of kernel types are kept as they are; otherwise
/// everything is packed dense in `format`, bf16 in `bf16_layout` (the one the backend that will
/// load the weights packs: [`super::CpuBackend::new`] detects it).
///
/// Errors, as `pack` gives them: INVALID_ARGUMENT for no parts or parts of different widths, a
/// dense part under a quantized format; UNSUPPORTED for a quantized part of a type without
/// kernels.
pub(crate) fn packed_bytes(
    parts: &[WeightPartLayout],
    format: WeightFormat,
    bf16_layout: Layout,
) -> Result<usize> {
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
        Some(_) => {
            let layout = if format == WeightFormat::BF16 {
                bf16_layout
            } else {
                Layout::Panels
            };
            Ok(dense_bytes(out, layout.padded_cols(first.cols), format))
        }
    }
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

/// Writes row `r` (`src`, `in` values) into the packed storage `d` in `layout`; `d` was sized
/// for it.
fn scatter_row<T: Copy>(d: &mut [T], layout: Layout, r: usize, kp: usize, src: &[T]) {
    let width = layout.run();
    for (c, chunk) in src.chunks(width).enumerate() {
        let start = layout.index(r, c * width, kp);
        if let Some(dst) = d.get_mut(start..start + chunk.len()) {
            dst.copy_from_slice(chunk);
        }
    }
}

/// Packs `parts` (each `[out_i, in]`) stacked along `out` in `format`; bf16 weights in
/// `bf16_layout` (f32 ones always in [`Layout::Panels`]).
///
/// When every part is kept in ggml blocks of a kernel type, the blocks are stored as they are
/// (whatever `format`). When dense and quantized parts are mixed, the quantized ones are
/// dequantized (exactly, as ggml does) and everything is packed dense in `format`.
pub(crate) fn pack(
    parts: &[&HostTensor],
    format: WeightFormat,
    bf16_layout: Layout,
) -> Result<CpuWeight> {
    let (out, inp) = fused_shape(parts)?;
    if let Some(q) = QuantStack::from_parts(parts)? {
        return Ok(CpuWeight {
            out,
            inp,
            kp: inp,
            layout: Layout::Panels,
            data: WData::Quant(q),
            steps: false,
        });
    }
    let layout = if format == WeightFormat::BF16 {
        bf16_layout
    } else {
        Layout::Panels
    };
    let kp = layout.padded_cols(inp);
    let n = out
        .checked_next_multiple_of(layout.panel())
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
                    scatter_row(&mut d, layout, r, kp, src);
                    r += 1;
                }
            }
            WData::F32(d)
        }
        WeightFormat::Q8_0 | WeightFormat::Q4K => {
            // Reached only when some part is dense (all-quantized parts are kept in their
            // blocks above), which a quantized format refuses.
            check_quantized_parts(parts, format)?;
            return pack(parts, WeightFormat::F32, bf16_layout);
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
                    scatter_row(&mut d, layout, r, kp, src);
                    r += 1;
                }
            }
            WData::BF16(d)
        }
    };
    Ok(CpuWeight {
        out,
        inp,
        kp,
        layout,
        data,
        steps: false,
    })
}
