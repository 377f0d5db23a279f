//! Dequantization of every supported ggml type against gguf-py 0.17.1 (`gguf.quants.dequantize`,
//! which mirrors ggml's `dequantize_row_*`): random blocks with finite scales and rows sliced
//! from a real llama.cpp-written Q4_K_M GGUF (tests/fixtures/quant, written by
//! scripts/quant-oracle.py), compared bit for bit; and the errors for bad lengths and types.

use loraplex::quant::dequant::{block_fn, dequantize};
use loraplex::quant::{GgmlType, QuantData};
use loraplex::ErrorCode;

mod quant_support;
use quant_support::{assert_bits_eq, cases};

#[test]
fn every_fixture_dequantizes_bit_exact_with_gguf_py() {
    let cases = cases();
    assert!(cases.len() >= 20, "manifest has only {} cases", cases.len());
    for c in &cases {
        let got = dequantize(c.ty, &c.blocks, c.elements).unwrap();
        assert_bits_eq(&got, &c.expected, &c.name);
        // The one-block expansion (what on-the-fly kernels use) gives the same values.
        if let Some(one) = block_fn(c.ty) {
            let (bs, ts) = (c.ty.block_size() as usize, c.ty.type_size() as usize);
            let mut y = vec![f32::NAN; bs];
            for (b, blk) in c.blocks.chunks_exact(ts).enumerate() {
                one(blk, &mut y);
                assert_bits_eq(&y, &c.expected[b * bs..(b + 1) * bs], &c.name);
            }
        }
    }
}

#[test]
fn fixtures_cover_every_dequantizable_type_and_the_real_file() {
    let cases = cases();
    for ty in GgmlType::all().filter(|t| t.is_dequantizable() && *t != GgmlType::F32) {
        assert!(
            cases
                .iter()
                .any(|c| c.ty == ty && c.name.starts_with("random-")),
            "no random fixture for {ty}"
        );
    }
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q8_0] {
        assert!(
            cases
                .iter()
                .any(|c| c.ty == ty && c.name.starts_with("real-")),
            "no real-file fixture for {ty}"
        );
    }
}

#[test]
fn quant_data_expands_real_rows() {
    for c in cases().iter().filter(|c| c.name.starts_with("real-")) {
        let ts = c.ty.type_size() as usize;
        let bs = c.ty.block_size() as usize;
        let rows = 3;
        let cols = c.elements / rows;
        assert_eq!(c.blocks.len(), rows * cols / bs * ts, "{}", c.name);
        let q = QuantData::new(c.ty, rows, cols, c.blocks.clone()).unwrap();
        assert_bits_eq(&q.to_f32().unwrap(), &c.expected, &c.name);
        // Rows are whole byte ranges: the second row alone expands to the second row's values.
        let r1 = dequantize(c.ty, q.row(1), cols).unwrap();
        assert_bits_eq(&r1, &c.expected[cols..2 * cols], &c.name);
    }
}

#[test]
fn bad_lengths_are_invalid_model_errors() {
    for ty in GgmlType::all().filter(|t| t.is_dequantizable()) {
        let (bs, ts) = (ty.block_size() as usize, ty.type_size() as usize);
        let good = vec![0u8; 2 * ts];
        assert_eq!(dequantize(ty, &good, 2 * bs).unwrap(), vec![0.0; 2 * bs]);
        for (bytes, n) in [
            (2 * ts - 1, 2 * bs),
            (2 * ts + 1, 2 * bs),
            (2 * ts, bs),
            (2 * ts, 3 * bs),
        ] {
            let e = dequantize(ty, &vec![0u8; bytes], n).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidModel, "{ty} {bytes} bytes {n}");
            assert!(e.message().contains(ty.name()), "{}", e.message());
        }
        if bs > 1 {
            let e = dequantize(ty, &good, 2 * bs - 1).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidModel, "{ty}");
            assert!(e.message().contains("whole number"), "{}", e.message());
        }
    }
}

#[test]
fn undequantizable_types_are_unsupported_and_the_message_lists_the_supported() {
    let e = dequantize(GgmlType::Iq2Xxs, &[0; 66], 256).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unsupported);
    for name in ["IQ2_XXS", "Q4_K", "Q6_K", "Q5_0", "IQ4_XS", "Q8_0"] {
        assert!(e.message().contains(name), "{name}: {}", e.message());
    }
    assert!(block_fn(GgmlType::Iq2Xxs).is_none());
    assert!(block_fn(GgmlType::F16).is_none());
}
