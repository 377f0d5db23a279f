//! Fuzz the safe pickle VM and the torch zip reader: any input must give Ok or Err, never a
//! panic, an abort or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraplex::adapters::torch_pickle::{read_pickle, read_torch_zip};

fuzz_target!(|data: &[u8]| {
    let _ = read_pickle(data, "fuzz.pkl");
    let _ = read_torch_zip(data, "fuzz.bin");
});
