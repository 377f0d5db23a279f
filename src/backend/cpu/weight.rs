//! Packed weight matrices of the CPU backend.

use crate::backend::reference::fused_shape;
use crate::backend::WeightFormat;
use crate::error::Result;
use crate::tensor::{HostTensor, TensorData};

/// Packed element storage: row-major `[out, kp]`, each row zero-padded from `in` to `kp`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WData {
    /// f32 values.
    F32(Vec<f32>),
    /// bf16 values as raw bits (the top 16 bits of the f32).
    BF16(Vec<u16>),
}

/// A weight matrix `[out, in]` packed for the CPU kernels: row-major with every row padded with
/// zeros to a multiple of 8 columns, in f32 or bf16. Immutable once built; shareable across
/// threads.
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
    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            WData::F32(_) => WeightFormat::F32,
            WData::BF16(_) => WeightFormat::BF16,
        }
    }
    /// Bytes of packed storage (including row padding).
    pub fn bytes(&self) -> usize {
        match &self.data {
            WData::F32(v) => v.len() * 4,
            WData::BF16(v) => v.len() * 2,
        }
    }

    /// Row `r` widened to f32 into `dst[..in]`; false if `r` or `dst` is out of range.
    pub(crate) fn row_into(&self, r: usize, dst: &mut [f32]) -> bool {
        let Some(dst) = dst.get_mut(..self.inp) else {
            return false;
        };
        if r >= self.out {
            return false;
        }
        let start = r * self.kp;
        match &self.data {
            WData::F32(v) => match v.get(start..start + self.inp) {
                Some(src) => dst.copy_from_slice(src),
                None => return false,
            },
            WData::BF16(v) => match v.get(start..start + self.inp) {
                Some(src) => {
                    for (d, &b) in dst.iter_mut().zip(src) {
                        *d = bf16_bits_to_f32(b);
                    }
                }
                None => return false,
            },
        }
        true
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

/// Packs `parts` (each `[out_i, in]`) stacked along `out` in `format`.
pub(crate) fn pack(parts: &[&HostTensor], format: WeightFormat) -> Result<CpuWeight> {
    let (out, inp) = fused_shape(parts)?;
    let kp = inp.div_ceil(8) * 8;
    let n = out.checked_mul(kp).ok_or_else(|| {
        crate::error::Error::invalid_argument(format!("weight [{out}, {inp}] overflows"))
    })?;
    let data = match format {
        WeightFormat::F32 => {
            let mut d = vec![0f32; n];
            let mut r = 0;
            for p in parts {
                let vals = p.to_f32_vec();
                for src in vals.chunks_exact(inp) {
                    d[r * kp..r * kp + inp].copy_from_slice(src);
                    r += 1;
                }
            }
            WData::F32(d)
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
                    d[r * kp..r * kp + inp].copy_from_slice(src);
                    r += 1;
                }
            }
            WData::BF16(d)
        }
    };
    Ok(CpuWeight { out, inp, kp, data })
}
