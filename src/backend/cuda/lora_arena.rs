//! The device adapter arena: `num_slots` slots of bf16 device memory, each reserving every layer
//! and target at `max_rank` (DESIGN.md 1.1 "device cache"; kernels/README.md, lora.cu).
//!
//! Precision: the adapters arrive in f32 (the host cache and the CPU arena keep f32); the arena
//! holds each weight rounded to bf16 (round to nearest even, NaN and ±inf kept, [`stage_bf16`]),
//! which halves the bytes each upload moves over PCIe and each step reads; the kernels widen
//! every weight exactly to f32 and compute in f32.
//!
//! Layout (slot-major, then layer, then target in [`LoraTarget::index`] order; offsets and
//! lengths in elements, [`LORA_ELEM_BYTES`] bytes each): module
//! `(slot, layer, target)` starts at [`module_offset`], `(in + out) * max_rank` elements
//! reserved for it; an adapter of rank `r` stores A `[r, in]` there and B `[out, r]` right
//! after A (row stride `r`), so a module's bytes are rank-exact and contiguous.
//!
//! Uploads are asynchronous: [`CudaLoraArena::load_slot`] packs the adapter into pinned host
//! staging memory (converting it to bf16 on the way) and copies it on the arena's own copy
//! stream, which first waits for the work already queued on the compute stream (a step may
//! still read the slot's previous adapter); an event recorded after the copy is waited on by
//! the compute stream before the next `lora_apply` that reads the slot, so the copy overlaps
//! every step that does not use it. The staging memory is reused only after the previous copy
//! from it completed.

use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaSlice, CudaStream, DriverError, PinnedHostSlice};
use parking_lot::Mutex;
use rayon::iter::{IntoParallelIterator, ParallelIterator};

use super::device::driver_err;
use super::sgmv::SegModule;
use crate::backend::lora_arena::validate_slot;
use crate::backend::{LoraSlotData, LoraStackGeometry, LoraTarget};
use crate::error::{Error, Result};

/// Bytes of one arena element: a bf16 weight (its bits, as `u16`).
pub const LORA_ELEM_BYTES: usize = 2;

/// Writes `src` rounded to bf16 (round to nearest even; NaN stays a NaN, ±inf and values past
/// the largest bf16 become ±inf) into `dst` as bf16 bits, element by element. The two slices
/// have the same length (the caller slices them so; a shorter side ends the copy).
pub fn stage_bf16(dst: &mut [u16], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = half::bf16::from_f32(v).to_bits();
    }
}

/// [`stage_bf16`] of every `(offset, values)` part into `dst[offset..offset + values.len()]`,
/// the parts converted in parallel on rayon's global pool (an 8B-shape rank-16 adapter is 42 M
/// values: about 20 ms on one core, the rest of an upload being the copy). Parts are taken in
/// offset order; one that overlaps the previous part or ends past `dst` is cut to what fits
/// (validated adapters never do: their modules lie at disjoint offsets inside a slot).
pub fn stage_parts(dst: &mut [u16], parts: &[(usize, &[f32])]) {
    let mut order: Vec<&(usize, &[f32])> = parts.iter().collect();
    order.sort_by_key(|(off, _)| *off);
    let mut jobs: Vec<(&mut [u16], &[f32])> = Vec::with_capacity(order.len());
    let (mut rest, mut at) = (dst, 0usize);
    for &&(off, src) in &order {
        let Some(skip) = off.checked_sub(at) else {
            continue;
        };
        if skip > rest.len() {
            break;
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let n = src.len().min(tail.len());
        let (head, tail) = tail.split_at_mut(n);
        jobs.push((head, &src[..n]));
        rest = tail;
        at = off + n;
    }
    jobs.into_par_iter().for_each(|(d, s)| stage_bf16(d, s));
}

/// Rank and scale of a stored module (its offsets follow from the geometry).
#[derive(Debug, Clone, Copy)]
struct Stored {
    rank: usize,
    scale: f32,
}

/// Bytes of device memory an arena of geometry `g` reserves (every slot at `max_rank`,
/// [`LORA_ELEM_BYTES`] per element). Errors as [`LoraStackGeometry::arena_elems`].
pub fn arena_bytes(g: &LoraStackGeometry) -> Result<usize> {
    // arena_elems checked that 4 bytes per element do not overflow, so 2 do not either.
    Ok(g.arena_elems()? * LORA_ELEM_BYTES)
}

/// Elements from the start of a slot to module `(layer, target)` (see the module docs).
pub fn module_offset_in_slot(g: &LoraStackGeometry, layer: usize, target: usize) -> usize {
    let reserve = |(i, o): (usize, usize)| (i + o) * g.max_rank;
    let per_layer: usize = g.dims.iter().copied().map(reserve).sum();
    layer * per_layer + g.dims[..target].iter().copied().map(reserve).sum::<usize>()
}

/// Elements from the start of the arena to module `(slot, layer, target)`.
pub fn module_offset(g: &LoraStackGeometry, slot: usize, layer: usize, target: usize) -> usize {
    slot * g.slot_elems() + module_offset_in_slot(g, layer, target)
}

/// The ranges of a slot (offset from the slot's start, length) an adapter's modules occupy,
/// in order, adjacent ranges merged: what one upload copies.
pub fn upload_runs(g: &LoraStackGeometry, layers: &LoraSlotData<'_>) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (l, mods) in layers.iter().enumerate() {
        for t in LoraTarget::ALL {
            let Some(m) = &mods[t.index()] else { continue };
            let off = module_offset_in_slot(g, l, t.index());
            let len = m.a.len() + m.b.len();
            match runs.last_mut() {
                Some((s, n)) if *s + *n == off => *n += len,
                _ => runs.push((off, len)),
            }
        }
    }
    runs
}

/// The CUDA backend's adapter arena (see the module docs): the device memory (bf16 bits), one
/// slot of pinned host staging (bf16 bits) and the per-slot upload events. Owned by the engine's
/// worker, which loads slots one at a time (`&mut self`); ops take it by shared reference, so
/// the per-slot upload events sit behind a mutex.
#[derive(Debug)]
pub struct CudaLoraArena {
    geom: LoraStackGeometry,
    device: String,
    /// bf16 bits.
    data: CudaSlice<u16>,
    /// `[slot][layer][target]`.
    modules: Vec<Option<Stored>>,
    /// One slot of bf16 bits, filled by [`stage_bf16`].
    staging: PinnedHostSlice<u16>,
    /// Recorded on the copy stream after the last copy out of `staging`.
    staging_free: Option<CudaEvent>,
    /// Per slot: recorded after its last upload, until the compute stream waited on it.
    ready: Mutex<Vec<Option<CudaEvent>>>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
}

impl Drop for CudaLoraArena {
    fn drop(&mut self) {
        // Copies out of the staging memory must end before it is freed.
        let _ = self.copy.synchronize();
    }
}

fn no_timing() -> Option<sys::CUevent_flags> {
    Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
}

impl CudaLoraArena {
    /// Reserves every slot at `max_rank` (zeroed bf16 device memory, [`LORA_ELEM_BYTES`] per
    /// element) and one slot of pinned host staging (bf16 bits). Errors: INVALID_ARGUMENT for
    /// an empty or overflowing geometry, DEVICE when the memory cannot be allocated.
    pub(crate) fn new(
        compute: &Arc<CudaStream>,
        copy: &Arc<CudaStream>,
        device: &str,
        geom: LoraStackGeometry,
    ) -> Result<Self> {
        let total = geom.arena_elems()?;
        let total_bytes = arena_bytes(&geom)?;
        let slot_elems = geom.slot_elems();
        let err = |what: &str| {
            let what = what.to_string();
            move |e: DriverError| driver_err(device, &what, e)
        };
        let data = compute
            .alloc_zeros::<u16>(total)
            .map_err(err(&format!("adapter arena ({total_bytes} bytes)")))?;
        // SAFETY: the staging memory is zeroed through its raw pointer right below, before any
        // slice of it is formed.
        let mut staging = unsafe { compute.context().alloc_pinned::<u16>(slot_elems) }
            .map_err(err("pinned adapter staging"))?;
        let ptr = staging
            .as_mut_ptr()
            .map_err(err("pinned adapter staging"))?;
        // SAFETY: `ptr` points to `slot_elems` u16 of pinned host memory owned by `staging`,
        // which no copy uses yet; all-zero bytes are a valid u16 (bf16 +0.0).
        unsafe { std::ptr::write_bytes(ptr, 0, slot_elems) };
        Ok(Self {
            geom,
            device: device.to_string(),
            data,
            modules: vec![None; geom.num_slots * geom.num_layers * 7],
            staging,
            staging_free: None,
            ready: Mutex::new((0..geom.num_slots).map(|_| None).collect()),
            compute: compute.clone(),
            copy: copy.clone(),
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> LoraStackGeometry {
        self.geom
    }

    /// Bytes of device memory reserved ([`LORA_ELEM_BYTES`] per element).
    pub fn bytes(&self) -> usize {
        self.data.len() * LORA_ELEM_BYTES
    }

    /// The arena's device memory (bf16 bits).
    pub(crate) fn data(&self) -> &CudaSlice<u16> {
        &self.data
    }

    fn idx(&self, slot: usize, layer: usize, target: usize) -> usize {
        (slot * self.geom.num_layers + layer) * 7 + target
    }

    /// Stores an adapter in `slot` (see the module docs): waits for the previous copy out of
    /// the staging memory, converts the adapter's f32 weights to bf16 into it ([`stage_bf16`])
    /// and queues the copy; returns before the copy ends. Validated completely before anything
    /// is written. Errors as [`crate::backend::Backend::lora_load_slot`], DEVICE for a failed
    /// copy.
    pub(crate) fn load_slot(&mut self, slot: usize, layers: &LoraSlotData<'_>) -> Result<()> {
        validate_slot(&self.geom, slot, layers)?;
        let g = self.geom;
        let dev = self.device.clone();
        let dev = dev.as_str();
        let err = |what: &'static str| move |e: DriverError| driver_err(dev, what, e);
        if let Some(ev) = self.staging_free.take() {
            ev.synchronize().map_err(err("adapter staging wait"))?;
        }
        let staging = self
            .staging
            .as_mut_slice()
            .map_err(err("adapter staging"))?;
        let mut parts = Vec::new();
        for (l, mods) in layers.iter().enumerate() {
            for t in LoraTarget::ALL {
                let Some(m) = &mods[t.index()] else { continue };
                let off = module_offset_in_slot(&g, l, t.index());
                parts.push((off, m.a));
                parts.push((off + m.a.len(), m.b));
            }
        }
        stage_parts(staging, &parts);
        self.clear_slot(slot);
        let queued = self
            .compute
            .record_event(no_timing())
            .map_err(err("adapter upload ordering"))?;
        self.copy
            .wait(&queued)
            .map_err(err("adapter upload ordering"))?;
        let base = slot * g.slot_elems();
        let staging = self.staging.as_slice().map_err(err("adapter staging"))?;
        for (off, len) in upload_runs(&g, layers) {
            let src = &staging[off..off + len];
            let mut dst = self
                .data
                .try_slice_mut(base + off..base + off + len)
                .ok_or_else(|| {
                    Error::internal(format!("adapter slot {slot}: run outside the arena"))
                })?;
            self.copy
                .memcpy_htod(src, &mut dst)
                .map_err(err("adapter upload"))?;
        }
        let done = self
            .copy
            .record_event(no_timing())
            .map_err(err("adapter upload"))?;
        self.staging_free = Some(
            self.copy
                .record_event(no_timing())
                .map_err(err("adapter upload"))?,
        );
        self.ready.lock()[slot] = Some(done);
        for (l, mods) in layers.iter().enumerate() {
            for t in LoraTarget::ALL {
                if let Some(m) = &mods[t.index()] {
                    let k = self.idx(slot, l, t.index());
                    self.modules[k] = Some(Stored {
                        rank: m.rank,
                        scale: m.scale,
                    });
                }
            }
        }
        Ok(())
    }

    /// Empties `slot` (out-of-range slots are ignored).
    pub(crate) fn clear_slot(&mut self, slot: usize) {
        if slot >= self.geom.num_slots {
            return;
        }
        let start = self.idx(slot, 0, 0);
        let n = self.geom.num_layers * 7;
        for m in &mut self.modules[start..start + n] {
            *m = None;
        }
    }

    /// The module stored for `(slot, layer, target)` as the SGMV kernels see it, if any.
    pub(crate) fn module(
        &self,
        slot: usize,
        layer: usize,
        target: LoraTarget,
    ) -> Option<SegModule> {
        if slot >= self.geom.num_slots || layer >= self.geom.num_layers {
            return None;
        }
        let m = self
            .modules
            .get(self.idx(slot, layer, target.index()))
            .copied()
            .flatten()?;
        let a_off = module_offset(&self.geom, slot, layer, target.index());
        Some(SegModule {
            rank: m.rank,
            scale: m.scale,
            a_off,
            b_off: a_off + m.rank * self.geom.dims[target.index()].0,
        })
    }

    /// Makes the compute stream wait for the uploads of `slots` still pending (each waited on
    /// once).
    pub(crate) fn wait_ready(
        &self,
        slots: impl Iterator<Item = usize>,
    ) -> std::result::Result<(), DriverError> {
        let mut ready = self.ready.lock();
        for s in slots {
            if let Some(ev) = ready.get_mut(s).and_then(Option::take) {
                self.compute.wait(&ev)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LoraPrecision, LoraWeights};

    fn geom() -> LoraStackGeometry {
        LoraStackGeometry {
            num_slots: 3,
            max_rank: 4,
            num_layers: 2,
            dims: [(8, 8), (8, 2), (8, 2), (8, 8), (8, 16), (8, 16), (16, 8)],
            precision: LoraPrecision::Bf16,
        }
    }

    /// The bf16 nearest to `v` by value (ties to the even bits), chosen by comparing the two
    /// candidates around `v` in f64: an oracle written without bit tricks. Finite `v` whose
    /// rounding stays finite only.
    fn nearest_bf16(v: f32) -> u16 {
        let bits = v.to_bits();
        let lo = (bits >> 16) as u16; // truncated toward zero
        let hi = lo + 1; // next bf16 away from zero
        let val = |b: u16| f64::from(f32::from_bits(u32::from(b) << 16));
        let (dl, dh) = (
            (f64::from(v) - val(lo)).abs(),
            (val(hi) - f64::from(v)).abs(),
        );
        if bits & 0xffff == 0 || dl < dh || (dl == dh && lo.is_multiple_of(2)) {
            lo
        } else {
            hi
        }
    }

    #[test]
    fn staged_parts_land_at_their_offsets_and_leave_the_gaps() {
        let a: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37 - 50.0).collect();
        let b: Vec<f32> = (0..300).map(|i| -(i as f32) * 1.5e-3).collect();
        let c: Vec<f32> = vec![3.0; 10];
        let mut dst = vec![0xAAAA_u16; 1400];
        // Out of order on purpose; `c` runs past the end and is cut.
        stage_parts(&mut dst, &[(1050, &b), (0, &a), (1395, &c)]);
        let bits = |v: &[f32]| {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(dst[..1000], bits(&a)[..]);
        assert!(dst[1000..1050].iter().all(|&x| x == 0xAAAA));
        assert_eq!(dst[1050..1350], bits(&b)[..]);
        assert!(dst[1350..1395].iter().all(|&x| x == 0xAAAA));
        assert_eq!(dst[1395..], bits(&c[..5])[..]);
        // An overlapping part is skipped, not written over its neighbour.
        let mut d2 = vec![0u16; 20];
        stage_parts(&mut d2, &[(0, &c), (5, &c)]);
        assert_eq!(d2[..10], bits(&c)[..]);
        assert!(d2[10..].iter().all(|&x| x == 0));
    }

    #[test]
    fn staging_rounds_to_nearest_even_and_keeps_nan_and_inf() {
        let cases: [(u32, u16); 12] = [
            (0x3f80_0000, 0x3f80), // 1.0: exact
            (0x3f80_8000, 0x3f80), // 1 + 2^-8: tie, down to even
            (0x3f81_8000, 0x3f82), // tie, up to even
            (0x3f80_8001, 0x3f81), // just above the tie
            (0x3f81_7fff, 0x3f81), // just below the tie
            (0xbf81_8000, 0xbf82), // negative tie
            (0x8000_0000, 0x8000), // -0.0
            (0x0001_8000, 0x0002), // subnormal tie, up to even
            (0x7f7f_ffff, 0x7f80), // f32::MAX rounds past the largest bf16: inf
            (0x7f80_0000, 0x7f80), // inf
            (0xff80_0000, 0xff80), // -inf
            (0x7f7f_7fff, 0x7f7f), // below the tie to inf: the largest bf16
        ];
        let src: Vec<f32> = cases.iter().map(|&(b, _)| f32::from_bits(b)).collect();
        let mut dst = vec![0u16; src.len()];
        stage_bf16(&mut dst, &src);
        for (&(b, want), got) in cases.iter().zip(&dst) {
            assert_eq!(*got, want, "{b:#010x}: {got:#06x}, want {want:#06x}");
        }
        // Every NaN stays a NaN, including one whose payload is only in the dropped low bits
        // (truncation would turn it into inf).
        let nans = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
        ];
        let mut out = [0u16; 4];
        stage_bf16(&mut out, &nans);
        for (v, b) in nans.iter().zip(out) {
            let w = f32::from_bits(u32::from(b) << 16);
            assert!(w.is_nan(), "{:#010x} -> {b:#06x}", v.to_bits());
            assert_eq!(
                b >> 15,
                (v.to_bits() >> 31) as u16,
                "sign of {:#010x}",
                v.to_bits()
            );
        }
        // Random finite values of every exponent against the f64 oracle.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let src: Vec<f32> = (0..20000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f32::from_bits(x as u32 & 0xff7f_ffff) // exponent below 255: finite
            })
            .filter(|v| v.abs() < f32::from_bits(0x7f7f_8000))
            .collect();
        let mut dst = vec![0u16; src.len()];
        stage_bf16(&mut dst, &src);
        for (v, got) in src.iter().zip(&dst) {
            assert_eq!(*got, nearest_bf16(*v), "{:#010x}", v.to_bits());
        }
    }

    #[test]
    fn the_arena_takes_two_bytes_per_element() {
        let g = geom();
        assert_eq!(LORA_ELEM_BYTES, 2);
        assert_eq!(arena_bytes(&g).unwrap(), 3 * g.slot_elems() * 2);
        assert_eq!(arena_bytes(&g).unwrap() * 2, g.arena_elems().unwrap() * 4);
        let empty = LoraStackGeometry { num_slots: 0, ..g };
        assert!(arena_bytes(&empty).is_err());
    }

    #[test]
    fn modules_are_slot_major_then_layer_then_target_at_max_rank() {
        let g = geom();
        let per_layer = (16 + 10 + 10 + 16 + 24 + 24 + 24) * 4;
        assert_eq!(g.slot_elems(), 2 * per_layer);
        assert_eq!(module_offset(&g, 0, 0, 0), 0);
        assert_eq!(module_offset(&g, 0, 0, 1), 16 * 4);
        assert_eq!(
            module_offset(&g, 0, 0, 6),
            (16 + 10 + 10 + 16 + 24 + 24) * 4
        );
        assert_eq!(module_offset(&g, 0, 1, 0), per_layer);
        assert_eq!(
            module_offset(&g, 2, 1, 3),
            2 * g.slot_elems() + per_layer + (16 + 10 + 10) * 4
        );
    }

    #[test]
    fn runs_are_rank_exact_and_merge_only_full_rank_neighbours() {
        let g = geom();
        let (a8, b8) = (vec![0.0; 4 * 8], vec![0.0; 8 * 4]);
        let (a2, b2) = (vec![0.0; 2 * 8], vec![0.0; 2 * 2]);
        let w = |rank, a: &'static [f32], b: &'static [f32]| {
            Some(LoraWeights {
                rank,
                a,
                b,
                scale: 1.0,
            })
        };
        let (a8, b8, a2, b2): (
            &'static [f32],
            &'static [f32],
            &'static [f32],
            &'static [f32],
        ) = (a8.leak(), b8.leak(), a2.leak(), b2.leak());
        // Layer 0: q at full rank 4 then k at rank 2 (adjacent: merged); layer 1: q only.
        let mut layers = vec![[None; 7]; 2];
        layers[0][0] = w(4, a8, b8);
        layers[0][1] = w(2, a2, b2);
        layers[1][0] = w(4, a8, b8);
        let runs = upload_runs(&g, &layers);
        let l1 = module_offset_in_slot(&g, 1, 0);
        assert_eq!(runs, vec![(0, 64 + 20), (l1, 64)]);
        // k at rank 2 leaves a gap before v: v starts a new run.
        layers[0][2] = w(2, a2, b2);
        let runs = upload_runs(&g, &layers);
        assert_eq!(runs[1], (module_offset_in_slot(&g, 0, 2), 20));
    }
}
