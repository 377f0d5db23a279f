//! Rescanning PEFT sources decides "changed" by content: a touch, an atomic replace with the same
//! bytes or a copy keeps an adapter's generation, new bytes give a new one, and a metadata change
//! of content not known (never loaded, a load pending, a loaded copy that disagrees) is a change.
//! (Through the engine, prefix blocks and outputs: tests/prefix_cache.rs.)

mod common;

use std::path::{Path, PathBuf};

use loraplex::adapters::load_adapter;
use loraplex::adapters::source::{fingerprint, PeftRegistry, Served};
use loraplex::adapters::AdapterLimits;

/// Writes (replacing) a random HF adapter `peft/name`.
fn write_adapter(peft: &Path, name: &str, seed: u64) {
    let dir = peft.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    common::export_tiny_adapter(&dir, seed);
}

/// The content hash `load_adapter` gives the adapter in `dir`.
fn loaded_hash(dir: &Path) -> String {
    let shape = common::tiny_shape(common::TinySpec::default());
    load_adapter(dir, "x", &shape, &AdapterLimits::default())
        .unwrap()
        .generation
}

/// A source with adapter "ad" (seed 1), registered: (tempdir, source, adapter dir, its content
/// hash as loaded, registry).
fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf, String, PeftRegistry) {
    let d = tempfile::tempdir().unwrap();
    let peft = d.path().join("loras");
    write_adapter(&peft, "ad", 1);
    let dir = peft.join("ad");
    let hash = loaded_hash(&dir);
    let mut reg = PeftRegistry::new();
    reg.add_source(&peft).unwrap();
    (d, peft, dir, hash, reg)
}

#[test]
fn metadata_changes_keep_the_generation_once_the_content_is_known() {
    let (d, peft, dir, hash, mut reg) = fixture();
    let g0 = reg.get("ad").unwrap().generation;
    assert_eq!(
        reg.get("ad").unwrap().content_hash,
        None,
        "read at discovery"
    );

    // The engine reports its loaded copy: the hash is recorded, nothing changes.
    let served = |h: &str| {
        let h = h.to_string();
        move |_: &str, _: u64| Served::Content(h.clone())
    };
    let r = reg.scan_with(&served(&hash));
    assert!(r.changed.is_empty(), "{r:?}");
    assert_eq!(reg.get("ad").unwrap().content_hash.as_deref(), Some(&*hash));

    // A touch: new fingerprint, same generation, not reported.
    let fp0 = reg.get("ad").unwrap().fingerprint;
    common::touch_files(&dir, 1_000_000);
    assert_ne!(
        fingerprint(&dir).unwrap().1,
        fp0,
        "the touch changed no metadata"
    );
    let r = reg.scan_with(&served(&hash));
    assert!(r.changed.is_empty(), "{r:?}");
    let a = reg.get("ad").unwrap();
    assert_eq!(a.generation, g0);
    assert_eq!(a.fingerprint, fingerprint(&dir).unwrap().1);

    // An atomic replace with the same bytes, with the loaded copy evicted (the recorded hash
    // decides).
    let fp1 = a.fingerprint;
    common::replace_with_same_bytes(&dir, "adapter_model.safetensors");
    assert_ne!(fingerprint(&dir).unwrap().1, fp1);
    let r = reg.scan();
    assert!(r.changed.is_empty(), "{r:?}");
    assert_eq!(reg.get("ad").unwrap().generation, g0);

    // A copy of the directory with the same bytes (new inodes and times).
    let copy = d.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&copy, &dir).unwrap();
    let r = reg.scan();
    assert!(r.changed.is_empty(), "{r:?}");
    assert_eq!(reg.get("ad").unwrap().generation, g0);

    // New bytes: a new generation, reported, with the new content's hash recorded.
    write_adapter(&peft, "ad", 2);
    let new_hash = loaded_hash(&dir);
    assert_ne!(new_hash, hash);
    let r = reg.scan();
    assert_eq!(r.changed, vec!["ad".to_string()]);
    let a = reg.get("ad").unwrap();
    assert!(a.generation > g0);
    assert_eq!(a.content_hash.as_deref(), Some(&*new_hash));
}

#[test]
fn unknown_or_disagreeing_content_counts_as_a_change() {
    let (_d, _, dir, hash, mut reg) = fixture();
    let mut gen = reg.get("ad").unwrap().generation;
    let mut step = |reg: &mut PeftRegistry, secs: u64, served: Served| {
        common::touch_files(&dir, secs);
        let r = reg.scan_with(&|_, _| served.clone());
        let g = reg.get("ad").unwrap().generation;
        let changed = r.changed == vec!["ad".to_string()];
        assert_eq!(changed, g != gen, "{r:?}");
        gen = g;
        changed
    };
    // Never loaded, never read: a touch is a change (lazy recording).
    assert!(step(&mut reg, 10, Served::Nothing));
    // A load in flight or refused: its content is unknown.
    assert!(step(&mut reg, 20, Served::Pending));
    // Known by the loaded copy: kept.
    assert!(!step(&mut reg, 30, Served::Content(hash.clone())));
    // A loaded copy whose hash disagrees with the recorded one (it was read while the files
    // were changing): not trusted.
    assert!(step(&mut reg, 40, Served::Content("0".repeat(64))));
}

/// Files rewritten, loaded, then restored to the recorded bytes before the next scan: the
/// generation served the rewritten bytes, so the restore is a change.
#[test]
fn a_load_between_scans_is_remembered() {
    let (_d, peft, dir, hash, mut reg) = fixture();
    let r = reg.scan_with(&|_, _| Served::Content(hash.clone()));
    assert!(r.changed.is_empty());
    let g = reg.get("ad").unwrap().generation;
    // Other bytes are loaded under generation g (the loader reports it), then evicted.
    let saved = peft.join("saved");
    std::fs::rename(&dir, &saved).unwrap();
    write_adapter(&peft, "ad", 2);
    reg.note_loaded("ad", g, &loaded_hash(&dir));
    // An older generation's report is ignored.
    reg.note_loaded("ad", g - 1, &hash);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&saved, &dir).unwrap();
    common::touch_files(&dir, 50);
    let r = reg.scan_with(&|_, _| Served::Nothing);
    assert_eq!(r.changed, vec!["ad".to_string()], "{r:?}");
    assert!(reg.get("ad").unwrap().generation > g);
    assert_eq!(reg.get("ad").unwrap().content_hash.as_deref(), Some(&*hash));
}
