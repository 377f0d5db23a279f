//! The per-step description of which LoRA adapter slot each token row uses (DESIGN.md 1.4).
//!
//! The engine builds one [`LoraBatch`] per step (empty when every row uses the base model); the
//! backend applies it in every target module with `lora_apply`. [`LoraTarget`] lives in the
//! neutral [`crate::lora_target`] module (the adapter readers use it too) and is re-exported here.

pub use crate::lora_target::LoraTarget;

/// The most adapters one row mixes (`W + Σ sᵢ·Bᵢ·Aᵢ` over up to this many slots).
pub const MAX_MIX: usize = 4;

/// Which device-cache slot(s) each token row of a step uses.
///
/// `token_slot` is every row's first (usually only) adapter, `-1` for the base model; a row that
/// mixes adapters (a request naming several, each with a scale) lists its further adapters in
/// `mix` lanes: lane `k` holds every row's `(k+2)`-th adapter (`-1` where a row has fewer). Each
/// lane's contribution is scaled per row by its `*_scale` vector (empty: 1.0 for every row) on
/// top of the adapter's own `alpha / r` scale, and lanes are applied in order, so a row's
/// result depends only on its own adapters and scales.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraBatch {
    /// First adapter slot of each token row (`-1`: none).
    pub token_slot: Vec<i32>,
    /// Mixture scale of `token_slot`'s adapter per row; empty = 1.0 everywhere.
    pub token_scale: Vec<f32>,
    /// Further adapters of mixing rows (at most [`MAX_MIX`] - 1 lanes).
    pub mix: Vec<LoraLane>,
}

/// One lane of adapters: a slot per row (`-1`: none) and its scale (empty = 1.0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraLane {
    /// Slot per row.
    pub slot: Vec<i32>,
    /// Scale per row; empty = 1.0.
    pub scale: Vec<f32>,
}

impl LoraBatch {
    /// A batch whose rows use one adapter each at scale 1 (`-1`: base model).
    pub fn from_slots(token_slot: Vec<i32>) -> Self {
        Self {
            token_slot,
            ..Self::default()
        }
    }

    /// True when no row uses an adapter.
    pub fn is_empty(&self) -> bool {
        self.lanes().all(|(slots, _)| slots.iter().all(|&s| s < 0))
    }

    /// Every lane as `(slots, scales)`: `token_slot` first, then the `mix` lanes, in the order
    /// backends apply them.
    pub fn lanes(&self) -> impl Iterator<Item = (&[i32], &[f32])> {
        std::iter::once((self.token_slot.as_slice(), self.token_scale.as_slice())).chain(
            self.mix
                .iter()
                .map(|l| (l.slot.as_slice(), l.scale.as_slice())),
        )
    }
}

/// The mixture scale of row `t` in a lane's `scales` (empty or short: 1.0).
pub fn lane_scale(scales: &[f32], t: usize) -> f32 {
    scales.get(t).copied().unwrap_or(1.0)
}

/// Shape of a device adapter arena: `num_slots` slots, each able to hold one adapter of rank up
/// to `max_rank` in every layer and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraStackGeometry {
    /// Slots (`max_gpu_loras`).
    pub num_slots: usize,
    /// Largest rank a slot holds (`max_lora_rank`).
    pub max_rank: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// `(in, out)` of each target, indexed by [`LoraTarget::index`].
    pub dims: [(usize, usize); 7],
    /// How the slots store adapter weights.
    pub precision: LoraPrecision,
}

/// How an adapter arena stores the weights of its slots (the host adapter cache keeps f32
/// whatever this says). The LoRA math is the same for both: the stored values, read as f32,
/// times f32 activations with f32 sums; bf16 halves the bytes a step streams per adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraPrecision {
    /// f32, as the adapter was loaded.
    #[default]
    F32,
    /// bf16, each weight rounded to nearest even from its f32 when the slot is filled: chosen
    /// when the base weights are bf16 (the same precision scheme), and on CUDA devices.
    Bf16,
}

impl LoraPrecision {
    /// Bytes of one stored weight.
    pub fn elem_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

impl LoraStackGeometry {
    /// Weights of the whole arena (every slot at `max_rank`), for a backend reserving it.
    /// Errors (INVALID_ARGUMENT) when the geometry is empty (no slots, rank or layers) or its
    /// bytes overflow.
    pub fn arena_elems(&self) -> crate::error::Result<usize> {
        use crate::error::Error;
        if self.num_slots == 0 || self.max_rank == 0 || self.num_layers == 0 {
            return Err(Error::invalid_argument(format!(
                "adapter arena: slots ({}), max rank ({}) and layers ({}) must be > 0",
                self.num_slots, self.max_rank, self.num_layers
            )));
        }
        self.slot_elems()
            .checked_mul(self.num_slots)
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| Error::invalid_argument("adapter arena size overflows"))
    }

    /// Weights one slot reserves at `max_rank` (all layers, all targets).
    pub fn slot_elems(&self) -> usize {
        self.num_layers
            * self
                .dims
                .iter()
                .map(|(i, o)| (i + o) * self.max_rank)
                .sum::<usize>()
    }
}

/// One module's weights as handed to the backend: `y += scale * B · (A · x)`.
#[derive(Debug, Clone, Copy)]
pub struct LoraWeights<'a> {
    /// Rank r (1..=max_rank).
    pub rank: usize,
    /// `A`, row-major `[rank, in]`.
    pub a: &'a [f32],
    /// `B`, row-major `[out, rank]`.
    pub b: &'a [f32],
    /// Scale s.
    pub scale: f32,
}

/// An adapter as the backend sees it: `layers[l][target.index()]`, `None` = not adapted.
pub type LoraSlotData<'a> = [[Option<LoraWeights<'a>>; 7]];
