//! HF PEFT adapters and the torch zip reader against the shared fixtures (reads ../shared; skips
//! when it is absent).

use std::path::{Path, PathBuf};

use loraplex::adapters::torch_pickle::read_torch_zip;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.is_dir() {
        Some(p)
    } else {
        println!("skipping: {} not found", p.display());
        None
    }
}

#[test]
fn torch_zip_reads_fixture_bin() {
    let Some(sh) = shared() else { return };
    let path = sh.join("fixtures/tiny-llama/adapters/hf-qv-r16-bin/adapter_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    let tensors = read_torch_zip(&bytes, "adapter_model.bin").unwrap();
    assert_eq!(tensors.len(), 12);
    let (k, t) = &tensors[0];
    assert_eq!(
        k,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(t.shape, vec![16, 64]);
    // Storage "0" holds exactly this tensor, contiguous f32 LE.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("adapter_model/data/0").unwrap(), &mut raw)
        .unwrap();
    let want: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(t.to_f32_vec(), want);
    assert_eq!(tensors[1].1.shape, vec![64, 16]);
}
