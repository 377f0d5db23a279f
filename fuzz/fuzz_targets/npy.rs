//! Fuzz the strict `.npy` parser: any input must give `Ok` or `Err`, never a panic, and an
//! accepted array must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraplex::adapters::npy::parse_npy;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_npy(data, "fuzz.npy") {
        let numel: usize = a.shape.iter().product();
        assert_eq!(numel, a.numel());
        assert!(numel * a.dtype.size() <= data.len());
    }
});
