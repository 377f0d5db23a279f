//! A host-memory adapter arena: the device cache's storage on host backends (reference, CPU).
//!
//! `num_slots` slots, each a contiguous region reserved for rank `max_rank` in every layer and
//! target; an adapter is packed at its real rank from the start of its slot's region (A `[r, in]`
//! then B `[out, r]` per module), so the bytes used are rank-exact. Weights are stored in the
//! geometry's [`LoraPrecision`] (bf16: rounded to nearest even when the slot is filled).

use half::bf16;

use super::lora::{LoraPrecision, LoraSlotData, LoraStackGeometry, LoraTarget};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
struct ModuleEntry {
    rank: usize,
    scale: f32,
    a_off: usize,
    b_off: usize,
}

/// A stored module's weights in the arena's precision, borrowed from the arena.
#[derive(Debug, Clone, Copy)]
pub enum ArenaWeights<'a> {
    /// f32 weights.
    F32(&'a [f32]),
    /// bf16 weights.
    Bf16(&'a [bf16]),
}

impl ArenaWeights<'_> {
    /// Number of weights.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Bf16(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every weight as f32 (exact for bf16).
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.to_vec(),
            Self::Bf16(v) => v.iter().map(|w| w.to_f32()).collect(),
        }
    }

    /// Weight `i` as f32 (exact for bf16), `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<f32> {
        match self {
            Self::F32(v) => v.get(i).copied(),
            Self::Bf16(v) => v.get(i).map(|w| w.to_f32()),
        }
    }
}

/// One stored module, borrowed from the arena.
#[derive(Debug, Clone, Copy)]
pub struct ArenaModule<'a> {
    /// Rank.
    pub rank: usize,
    /// Scale.
    pub scale: f32,
    /// `A [rank, in]`.
    pub a: ArenaWeights<'a>,
    /// `B [out, rank]`.
    pub b: ArenaWeights<'a>,
}

/// The arena's storage, in its precision.
#[derive(Debug)]
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl Store {
    /// `src` written at `off` (bf16: rounded to nearest even); the caller checked the range.
    fn write(&mut self, off: usize, src: &[f32]) {
        match self {
            Self::F32(v) => v[off..off + src.len()].copy_from_slice(src),
            Self::Bf16(v) => v[off..off + src.len()]
                .iter_mut()
                .zip(src)
                .for_each(|(d, &x)| *d = bf16::from_f32(x)),
        }
    }

    /// Weights `range`, `None` when out of range.
    fn get(&self, range: std::ops::Range<usize>) -> Option<ArenaWeights<'_>> {
        match self {
            Self::F32(v) => v.get(range).map(ArenaWeights::F32),
            Self::Bf16(v) => v.get(range).map(ArenaWeights::Bf16),
        }
    }
}

/// See the module docs. Not shared between threads (owned by the worker's backend state).
#[derive(Debug)]
pub struct HostLoraArena {
    geom: LoraStackGeometry,
    slot_elems: usize,
    data: Store,
    /// `[slot][layer][target]`.
    modules: Vec<Option<ModuleEntry>>,
}

impl HostLoraArena {
    /// Reserves every slot at `max_rank`. Errors when the geometry is empty or overflows.
    pub fn new(geom: LoraStackGeometry) -> Result<Self> {
        let total = geom.arena_elems()?;
        let slot_elems = geom.slot_elems();
        Ok(Self {
            geom,
            slot_elems,
            data: match geom.precision {
                LoraPrecision::F32 => Store::F32(vec![0.0; total]),
                // Zeroed pages from the allocator (as `vec![0.0; n]` gets for f32): memory the
                // process only touches once a slot is filled, not `max_gpu_loras` slots up
                // front (`vec![bf16::ZERO; n]` would write every element).
                LoraPrecision::Bf16 => {
                    Store::Bf16(bytemuck::allocation::cast_vec(vec![0u16; total]))
                }
            },
            modules: vec![None; geom.num_slots * geom.num_layers * 7],
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> LoraStackGeometry {
        self.geom
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.slot_elems * self.geom.num_slots * self.geom.precision.elem_bytes()
    }

    fn idx(&self, slot: usize, layer: usize, target: LoraTarget) -> usize {
        (slot * self.geom.num_layers + layer) * 7 + target.index()
    }

    /// Stores an adapter in `slot`; validated completely before anything is written.
    pub fn load_slot(&mut self, slot: usize, layers: &LoraSlotData<'_>) -> Result<()> {
        validate_slot(&self.geom, slot, layers)?;
        self.clear_slot(slot);
        let mut off = slot * self.slot_elems;
        for (l, mods) in layers.iter().enumerate() {
            for t in LoraTarget::ALL {
                let Some(m) = &mods[t.index()] else { continue };
                let a_off = off;
                self.data.write(a_off, m.a);
                let b_off = a_off + m.a.len();
                self.data.write(b_off, m.b);
                off = b_off + m.b.len();
                let k = self.idx(slot, l, t);
                self.modules[k] = Some(ModuleEntry {
                    rank: m.rank,
                    scale: m.scale,
                    a_off,
                    b_off,
                });
            }
        }
        Ok(())
    }

    /// Empties `slot` (out-of-range slots are ignored).
    pub fn clear_slot(&mut self, slot: usize) {
        if slot >= self.geom.num_slots {
            return;
        }
        let start = self.idx(slot, 0, LoraTarget::Q);
        let n = self.geom.num_layers * 7;
        for m in &mut self.modules[start..start + n] {
            *m = None;
        }
    }

    /// The module stored for `(slot, layer, target)`, if any.
    pub fn module(&self, slot: usize, layer: usize, target: LoraTarget) -> Option<ArenaModule<'_>> {
        if slot >= self.geom.num_slots || layer >= self.geom.num_layers {
            return None;
        }
        let e = self
            .modules
            .get(self.idx(slot, layer, target))
            .copied()
            .flatten()?;
        let (i, o) = self.geom.dims[target.index()];
        Some(ArenaModule {
            rank: e.rank,
            scale: e.scale,
            a: self.data.get(e.a_off..e.a_off + e.rank * i)?,
            b: self.data.get(e.b_off..e.b_off + o * e.rank)?,
        })
    }
}

/// Checks an adapter for `slot` of an arena of geometry `g` (what
/// [`super::Backend::lora_load_slot`] refuses): INTERNAL for a slot out of range,
/// INVALID_ADAPTER for a layer count other than the geometry's, a rank outside `1..=max_rank`
/// or an A/B length that does not match the rank and the target's dims (naming the layer and
/// target). Shared by the host and device arenas.
pub(crate) fn validate_slot(
    g: &LoraStackGeometry,
    slot: usize,
    layers: &LoraSlotData<'_>,
) -> Result<()> {
    if slot >= g.num_slots {
        return Err(Error::internal(format!(
            "adapter slot {slot} out of range ({} slots)",
            g.num_slots
        )));
    }
    if layers.len() != g.num_layers {
        return Err(Error::invalid_adapter(format!(
            "adapter has {} layers, the model has {}",
            layers.len(),
            g.num_layers
        )));
    }
    for (l, mods) in layers.iter().enumerate() {
        for t in LoraTarget::ALL {
            let Some(m) = &mods[t.index()] else { continue };
            let (i, o) = g.dims[t.index()];
            if m.rank == 0 || m.rank > g.max_rank {
                return Err(Error::invalid_adapter(format!(
                    "layer {l} {}: rank {} is outside 1..={}",
                    t.hf_name(),
                    m.rank,
                    g.max_rank
                )));
            }
            if m.a.len() != m.rank * i || m.b.len() != o * m.rank {
                return Err(Error::invalid_adapter(format!(
                    "layer {l} {}: A has {} values and B {} (expected {}x{} and {}x{})",
                    t.hf_name(),
                    m.a.len(),
                    m.b.len(),
                    m.rank,
                    i,
                    o,
                    m.rank
                )));
            }
        }
    }
    Ok(())
}
