//! The paged KV cache in device memory: per layer, K and V as bf16
//! `[num_blocks * block_size, num_kv_heads * head_dim]` (the layout of
//! [`crate::backend::KvStore`], each value rounded to bf16 by `lpx_kv_write`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::device::driver_err;
use crate::backend::kv_store::kv_layer_elems;
use crate::backend::KvGeometry;
use crate::error::Result;

/// Bytes of one cached K or V value (bf16).
pub const KV_ELEM_BYTES: usize = 2;

/// The CUDA backend's KV cache (see the module docs). Owned by the engine's worker; freed on
/// the compute stream when dropped.
#[derive(Debug)]
pub struct CudaKvCache {
    pub(crate) geom: KvGeometry,
    /// K per layer (bf16 bits).
    pub(crate) k: Vec<CudaSlice<u16>>,
    /// V per layer (bf16 bits).
    pub(crate) v: Vec<CudaSlice<u16>>,
}

impl CudaKvCache {
    /// A zeroed cache. Errors: INVALID_ARGUMENT for a zero or overflowing geometry, DEVICE when
    /// the device memory cannot be allocated.
    pub(crate) fn new(stream: &Arc<CudaStream>, device: &str, geom: KvGeometry) -> Result<Self> {
        let n = kv_layer_elems(&geom)?;
        let zeroed = || -> Result<Vec<CudaSlice<u16>>> {
            (0..geom.num_layers)
                .map(|l| {
                    stream.alloc_zeros::<u16>(n).map_err(|e| {
                        driver_err(
                            device,
                            &format!("KV cache layer {l} ({} bytes)", n * KV_ELEM_BYTES),
                            e,
                        )
                    })
                })
                .collect()
        };
        Ok(Self {
            geom,
            k: zeroed()?,
            v: zeroed()?,
        })
    }

    /// The geometry the cache was allocated with.
    pub fn geometry(&self) -> KvGeometry {
        self.geom
    }

    /// Bytes of device memory the cache occupies.
    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|s| s.len() * KV_ELEM_BYTES)
            .sum()
    }
}
