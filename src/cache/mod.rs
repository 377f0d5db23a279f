//! Adapter caches: host (RAM, LRU + pins), device (backend slots), the memory plan and the
//! capacity planner.

pub mod capacity;
pub mod device;
pub mod host;
pub mod plan;

pub use capacity::{plan_capacity, CapacityPlan, Workload};
pub use device::{slot_data, DeviceKey, DeviceSlots};
pub use host::{Acquired, AdapterKey, HostCache, HostEntry, LoadState};
pub use plan::MemoryPlan;
