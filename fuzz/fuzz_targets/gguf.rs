//! Fuzz the GGUF reader (the base model file): header, metadata, tensor infos, tensor reads and
//! dequantization, and the whole `load_gguf` path (config and tokenizer from metadata). Any input
//! must give Ok or Err, never a panic, an abort or an allocation beyond what the file holds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loraplex::model::gguf::{dequantize, load_gguf, model_config, GgufFile};

/// One scratch file per fuzzing process (the reader takes a path; tmpfs when available),
/// removed after each input.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("loraplex-fuzz-gguf-{}.gguf", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    if let Ok(g) = GgufFile::open(path) {
        assert_eq!(g.file_size, data.len() as u64);
        let _ = model_config(&g);
        for t in &g.tensors {
            // The reader bounds every tensor by the file size.
            assert!(t.offset.saturating_add(t.n_bytes) <= g.file_size);
            if let Ok(bytes) = g.read_tensor_bytes(t) {
                if let Ok(v) = dequantize(t.ggml_type, &bytes, t.n_elements as usize) {
                    assert_eq!(v.len() as u64, t.n_elements);
                }
            }
        }
    }
    let _ = load_gguf(path);
    // Leave nothing behind when the run ends.
    let _ = std::fs::remove_file(path);
});
