//! Fuzz tar / tar.gz member reading with small limits: never a panic, never more member bytes
//! than the limits allow, and no accepted name that could escape the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraplex::adapters::archive::{read_tar_bytes, ArchiveLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits {
        max_decompressed: 1 << 20,
        max_member: 1 << 20,
    };
    if let Ok(members) = read_tar_bytes(data, "fuzz.tar", limits) {
        let total: usize = members.values().map(Vec::len).sum();
        assert!(total as u64 <= limits.max_decompressed);
        for name in members.keys() {
            assert!(!name.starts_with('/'));
            assert!(!name.split('/').any(|c| c == ".."));
        }
    }
});
