//! Step metadata in device memory: the small host arrays ops receive (token ids, positions,
//! block tables, cache slots, SGMV segments) uploaded as 32-bit words.
//!
//! Every layer of a step passes the same metadata, so [`MetaUploads`] keeps the last content
//! uploaded under each [`MetaKey`] and uploads again only when the content differs; the
//! comparison is on the host (a few KiB per step), the reuse saves one copy per op per layer.
//! Uploads and the kernels reading them are ordered on the compute stream, so overwriting a
//! key's buffer never races an earlier kernel still reading it.
//!
//! The flattening and encoding here are pure functions, unit-tested on the CPU.

use std::sync::Arc;

use cudarc::driver::{sys, CudaSlice, CudaStream, DriverError};

/// The block-table padding: a block index no cache has (the kernels give such a row NaN).
pub const NO_BLOCK: u32 = u32::MAX;

/// What a metadata buffer holds (one reusable device buffer each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    /// Token ids of `embedding_gather`.
    Ids,
    /// Row indices of `gather_rows`.
    Rows,
    /// RoPE positions.
    RopePos,
    /// RoPE frequencies (f32 bits).
    InvFreq,
    /// `kv_write`'s slot mapping.
    SlotMapping,
    /// Attention's row → sequence.
    RowSeq,
    /// Attention's row → position.
    RowPos,
    /// Attention's flattened block tables.
    BlockTables,
    /// SGMV segment starts (i32).
    SegStart,
    /// SGMV segment rows (i32).
    SegRows,
    /// SGMV A offsets (i64 as two words).
    SegAOff,
    /// SGMV B offsets (i64 as two words).
    SegBOff,
    /// SGMV ranks (i32).
    SegRank,
    /// SGMV adapter scales (f32 bits).
    SegScale,
    /// SGMV per-row lane scales (f32 bits).
    RowScale,
}

const KEYS: usize = 15;

impl MetaKey {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct Entry {
    host: Vec<u32>,
    dev: Option<CudaSlice<u32>>,
}

/// The device copies of the step metadata (see the module docs). Owned by the backend's
/// scratch state; used by one thread at a time.
#[derive(Debug, Default)]
pub(crate) struct MetaUploads {
    entries: [Entry; KEYS],
}

impl MetaUploads {
    /// The device buffers holding each item's words under its key, in order. Each is uploaded
    /// on `stream` unless the last upload under its key had the same content; each buffer has
    /// at least one word.
    pub(crate) fn upload<const N: usize>(
        &mut self,
        stream: &Arc<CudaStream>,
        items: [(MetaKey, &[u32]); N],
    ) -> Result<[&CudaSlice<u32>; N], DriverError> {
        for (key, words) in items {
            self.ensure(stream, key, words)?;
        }
        // `ensure` stored a buffer under every key (or returned its error above).
        let gone = || DriverError(sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE);
        let bufs: Vec<&CudaSlice<u32>> = items
            .iter()
            .map(|(key, _)| self.entries[key.index()].dev.as_ref())
            .collect::<Option<_>>()
            .ok_or_else(gone)?;
        bufs.try_into().map_err(|_| gone())
    }

    fn ensure(
        &mut self,
        stream: &Arc<CudaStream>,
        key: MetaKey,
        words: &[u32],
    ) -> Result<(), DriverError> {
        let e = &mut self.entries[key.index()];
        let need = words.len().max(1);
        let (mut dev, fresh) = match e.dev.take() {
            Some(d) if e.host == words => (d, true),
            Some(d) if d.len() >= need => (d, false),
            _ => (stream.alloc_zeros::<u32>(need.next_power_of_two())?, false),
        };
        if !fresh {
            e.host.clear();
            if !words.is_empty() {
                let mut dst = dev.slice_mut(..words.len());
                stream.memcpy_htod(words, &mut dst)?;
            }
            e.host.extend_from_slice(words);
        }
        e.dev = Some(dev);
        Ok(())
    }
}

/// The block tables as one `[n_seqs, max_blocks]` row-major array padded with [`NO_BLOCK`],
/// and `max_blocks` (at least 1, so that the array is never empty).
pub fn flatten_block_tables(tables: &[&[u32]]) -> (Vec<u32>, usize) {
    let max_blocks = tables.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut flat = vec![NO_BLOCK; tables.len() * max_blocks];
    for (row, t) in flat.chunks_exact_mut(max_blocks).zip(tables) {
        row[..t.len()].copy_from_slice(t);
    }
    (flat, max_blocks)
}

/// i32 values as words.
pub fn words_i32(v: &[i32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// f32 values as words (their bits).
pub fn words_f32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// i64 values as little-endian word pairs (the device reads them as `long long`).
pub fn words_i64(v: &[i64]) -> Vec<u32> {
    v.iter()
        .flat_map(|&x| [x as u64 as u32, ((x as u64) >> 32) as u32])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_are_padded_to_the_longest() {
        let (a, b, c): (&[u32], &[u32], &[u32]) = (&[3, 4], &[7], &[1, 2, 5]);
        let (flat, max) = flatten_block_tables(&[a, b, c]);
        assert_eq!(max, 3);
        assert_eq!(flat, vec![3, 4, NO_BLOCK, 7, NO_BLOCK, NO_BLOCK, 1, 2, 5]);
    }

    #[test]
    fn no_tables_or_empty_tables_still_give_one_column() {
        assert_eq!(flatten_block_tables(&[]), (vec![], 1));
        let e: &[u32] = &[];
        assert_eq!(flatten_block_tables(&[e, e]), (vec![NO_BLOCK, NO_BLOCK], 1));
    }

    #[test]
    fn words_encode_bits_little_endian() {
        assert_eq!(words_i32(&[-1, 5]), vec![u32::MAX, 5]);
        assert_eq!(words_f32(&[1.0]), vec![0x3f80_0000]);
        let w = words_i64(&[(7i64 << 32) | 9, -2]);
        assert_eq!(w, vec![9, 7, 0xffff_fffe, 0xffff_ffff]);
        // The words' bytes are the i64's little-endian bytes (what the device reads).
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(&bytes[..8], &((7i64 << 32) | 9).to_le_bytes());
    }
}
