//! Test support for tests/gguf.rs: a minimal GGUF v3 writer, an independent copy of llama.cpp's
//! q/k permutation, exactly representable quantized test data and a 2-layer toy Llama GGUF.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------- a tiny GGUF writer

pub const T_F32: u32 = 0;
pub const T_F16: u32 = 1;
pub const T_Q4_0: u32 = 2;
pub const T_Q4_1: u32 = 3;
pub const T_Q8_0: u32 = 8;
pub const T_IQ2_XXS: u32 = 16;
pub const T_BF16: u32 = 30;

#[derive(Clone, Default)]
pub struct Writer {
    pub kv: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    /// Data alignment used when writing (0 = 32); set `general.alignment` to match.
    pub align: usize,
}

pub fn gstr(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Writer {
    pub fn set(&mut self, key: &str, ty: u32, val: Vec<u8>) {
        self.kv.retain(|(k, _, _)| k != key);
        self.kv.push((key.to_string(), ty, val));
    }
    pub fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _, _)| k != key);
    }
    pub fn str(&mut self, key: &str, v: &str) {
        self.set(key, 8, gstr(v));
    }
    pub fn u32(&mut self, key: &str, v: u32) {
        self.set(key, 4, v.to_le_bytes().to_vec());
    }
    pub fn f32(&mut self, key: &str, v: f32) {
        self.set(key, 6, v.to_le_bytes().to_vec());
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        self.set(key, 7, vec![v as u8]);
    }
    pub fn str_array(&mut self, key: &str, v: &[String]) {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(gstr(s));
        }
        self.set(key, 9, b);
    }
    pub fn i32_array(&mut self, key: &str, v: &[i32]) {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self.set(key, 9, b);
    }
    /// `dims` in ggml order (innermost first).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) {
        self.tensors.retain(|t| t.0 != name);
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
    }
    pub fn bytes(&self) -> Vec<u8> {
        let align = if self.align == 0 { 32 } else { self.align };
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend(gstr(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        let mut data = Vec::new();
        for (name, dims, ty, d) in &self.tensors {
            b.extend(gstr(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for x in dims {
                b.extend(x.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            data.extend(d);
            while data.len() % align != 0 {
                data.push(0);
            }
            offset = data.len() as u64;
        }
        while !b.len().is_multiple_of(align) {
            b.push(0);
        }
        b.extend(data);
        b
    }
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// llama.cpp's convert_hf_to_gguf permutation, written independently of the library:
/// `w.reshape(n_head, 2, rph/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn numpy_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let rph = rows / n_head;
    let half = rph / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output index order (h, i, j, c) reads input (h, j, i, c).
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * rph + j * half + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// GPT-2's byte → printable-character table.
pub fn byte_level_alphabet() -> Vec<String> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap().to_string())
        .collect()
}

// Toy model shape: hidden 32, inter 64, 2 layers, 4 heads / 2 KV heads, head_dim 8.
pub const H: usize = 32;
pub const I: usize = 64;
pub const L: usize = 2;
pub const NH: usize = 4;
pub const NKV: usize = 2;
pub const HD: usize = 8;

pub struct Toy {
    pub writer: Writer,
    /// Expected HF tensors (name, shape, values).
    pub hf: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub vocab: usize,
}

/// Quantized test data: values on an exactly representable grid, plus their encoding.
pub fn q8_0(rng: &mut ChaCha8Rng, n: usize) -> (Vec<f32>, Vec<u8>) {
    let (mut vals, mut bytes) = (Vec::new(), Vec::new());
    for _ in 0..n / 32 {
        let d = f16::from_f32(rng.gen_range(1..8) as f32 / 64.0);
        bytes.extend(d.to_le_bytes());
        for _ in 0..32 {
            let q: i8 = rng.gen();
            bytes.push(q as u8);
            vals.push(q as f32 * d.to_f32());
        }
    }
    (vals, bytes)
}

/// Q4_0 (`with_min` false) or Q4_1 (true) blocks with random nibbles.
pub fn q4(rng: &mut ChaCha8Rng, n: usize, with_min: bool) -> (Vec<f32>, Vec<u8>) {
    let (mut vals, mut bytes) = (Vec::new(), Vec::new());
    for _ in 0..n / 32 {
        let d = f16::from_f32(rng.gen_range(1..8) as f32 / 16.0);
        let m = f16::from_f32(-(rng.gen_range(0..8) as f32) / 4.0);
        bytes.extend(d.to_le_bytes());
        if with_min {
            bytes.extend(m.to_le_bytes());
        }
        let nib: Vec<u8> = (0..32).map(|_| rng.gen_range(0..16)).collect();
        for j in 0..16 {
            bytes.push(nib[j] | (nib[j + 16] << 4));
        }
        for &q in &nib {
            vals.push(if with_min {
                q as f32 * d.to_f32() + m.to_f32()
            } else {
                (q as f32 - 8.0) * d.to_f32()
            });
        }
    }
    (vals, bytes)
}

pub fn toy(tied: bool) -> Toy {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.str("general.name", "toy");
    w.u32("general.alignment", 32);
    w.u32("llama.embedding_length", H as u32);
    w.u32("llama.feed_forward_length", I as u32);
    w.u32("llama.block_count", L as u32);
    w.u32("llama.attention.head_count", NH as u32);
    w.u32("llama.attention.head_count_kv", NKV as u32);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.f32("llama.rope.freq_base", 50000.0);
    w.u32("llama.context_length", 512);
    // Tokenizer: the 256 byte-level symbols, one merge, two control tokens.
    let mut tokens = byte_level_alphabet();
    tokens.push("Ġt".into());
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let mut types = vec![1i32; tokens.len()];
    let n = types.len();
    types[n - 2] = 3;
    types[n - 1] = 3;
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "smollm");
    w.str_array("tokenizer.ggml.tokens", &tokens);
    w.i32_array("tokenizer.ggml.token_type", &types);
    w.str_array("tokenizer.ggml.merges", &["Ġ t".to_string()]);
    w.u32("tokenizer.ggml.bos_token_id", (n - 2) as u32);
    w.u32("tokenizer.ggml.eos_token_id", (n - 1) as u32);
    w.bool("tokenizer.ggml.add_bos_token", true);
    w.str(
        "tokenizer.chat_template",
        "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    );

    let mut hf = Vec::new();
    type Hf = Vec<(String, Vec<usize>, Vec<f32>)>;
    pub fn add_f32(
        w: &mut Writer,
        hf: &mut Hf,
        rng: &mut ChaCha8Rng,
        g: &str,
        h: &str,
        shape: Vec<usize>,
        perm: Option<usize>,
    ) {
        let vals: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let stored = match perm {
            Some(nh) => numpy_permute(&vals, shape[0], shape[1], nh),
            None => vals.clone(),
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        w.tensor(g, &dims, T_F32, f32_bytes(&stored));
        hf.push((h.to_string(), shape, vals));
    }
    add_f32(
        &mut w,
        &mut hf,
        &mut rng,
        "token_embd.weight",
        "model.embed_tokens.weight",
        vec![n, H],
        None,
    );
    add_f32(
        &mut w,
        &mut hf,
        &mut rng,
        "output_norm.weight",
        "model.norm.weight",
        vec![H],
        None,
    );
    if !tied {
        add_f32(
            &mut w,
            &mut hf,
            &mut rng,
            "output.weight",
            "lm_head.weight",
            vec![n, H],
            None,
        );
    }
    for l in 0..L {
        let p = format!("model.layers.{l}");
        let b = format!("blk.{l}");
        add_f32(
            &mut w,
            &mut hf,
            &mut rng,
            &format!("{b}.attn_norm.weight"),
            &format!("{p}.input_layernorm.weight"),
            vec![H],
            None,
        );
        add_f32(
            &mut w,
            &mut hf,
            &mut rng,
            &format!("{b}.ffn_norm.weight"),
            &format!("{p}.post_attention_layernorm.weight"),
            vec![H],
            None,
        );
        add_f32(
            &mut w,
            &mut hf,
            &mut rng,
            &format!("{b}.attn_q.weight"),
            &format!("{p}.self_attn.q_proj.weight"),
            vec![NH * HD, H],
            Some(NH),
        );
        add_f32(
            &mut w,
            &mut hf,
            &mut rng,
            &format!("{b}.attn_k.weight"),
            &format!("{p}.self_attn.k_proj.weight"),
            vec![NKV * HD, H],
            Some(NKV),
        );
        // v: F16; o: BF16; gate: Q8_0; up: Q4_0; down: Q4_1.
        let v: Vec<f16> = (0..NKV * HD * H)
            .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        w.tensor(
            &format!("{b}.attn_v.weight"),
            &[H as u64, (NKV * HD) as u64],
            T_F16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
        hf.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![NKV * HD, H],
            v.iter().map(|x| x.to_f32()).collect(),
        ));
        let o: Vec<bf16> = (0..H * NH * HD)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        w.tensor(
            &format!("{b}.attn_output.weight"),
            &[(NH * HD) as u64, H as u64],
            T_BF16,
            o.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
        hf.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![H, NH * HD],
            o.iter().map(|x| x.to_f32()).collect(),
        ));
        let (gv, gb) = q8_0(&mut rng, I * H);
        w.tensor(
            &format!("{b}.ffn_gate.weight"),
            &[H as u64, I as u64],
            T_Q8_0,
            gb,
        );
        hf.push((format!("{p}.mlp.gate_proj.weight"), vec![I, H], gv));
        let (uv, ub) = q4(&mut rng, I * H, false);
        w.tensor(
            &format!("{b}.ffn_up.weight"),
            &[H as u64, I as u64],
            T_Q4_0,
            ub,
        );
        hf.push((format!("{p}.mlp.up_proj.weight"), vec![I, H], uv));
        let (dv, db) = q4(&mut rng, H * I, true);
        w.tensor(
            &format!("{b}.ffn_down.weight"),
            &[I as u64, H as u64],
            T_Q4_1,
            db,
        );
        hf.push((format!("{p}.mlp.down_proj.weight"), vec![H, I], dv));
    }
    Toy {
        writer: w,
        hf,
        vocab: n,
    }
}
