//! Adapter caches: host (RAM, LRU + pins), device (backend slots) and the memory plan.

pub mod device;
pub mod host;
pub mod plan;

pub use device::{slot_data, DeviceSlots};
pub use host::{Acquired, AdapterKey, HostCache, HostEntry, LoadState};
pub use plan::MemoryPlan;
