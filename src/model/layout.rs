//! The checkpoint layout of every supported [`super::Architecture`]: which tensors a model with a
//! given [`ModelConfig`] consumes, with their HF shapes, and the accounting that every checkpoint goes through before its weights are
//! packed (DESIGN.md 7, "every checkpoint tensor is consumed or the load fails naming it").
//!
//! Pure functions over host tensors; no I/O, no threads.

use std::collections::HashSet;

use super::{ModelConfig, RopeScaling, TensorMap};
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorData};

/// Tensors of one Llama decoder layer (two norms, q/k/v/o, gate/up/down); the fewest of any
/// supported architecture.
pub const TENSORS_PER_LAYER: usize = 9;

/// Refuses a layer count that a checkpoint of `n_tensors` tensors cannot hold, before anything is
/// sized by it (a few-KB file declaring 2^32 layers would otherwise have every expected tensor
/// listed and run the loader out of memory; found by fuzzing). `field` names the config key.
pub fn check_layer_count(c: &ModelConfig, n_tensors: usize, field: &str) -> Result<()> {
    if c.num_layers > n_tensors / TENSORS_PER_LAYER {
        return Err(Error::invalid_model(format!(
            "{field} is {} but the checkpoint holds {n_tensors} tensors, too few for that many \
             layers ({TENSORS_PER_LAYER} per layer)",
            c.num_layers
        )));
    }
    Ok(())
}

/// Every tensor a model with `c` consumes, by HF name, with its HF shape: the Llama layer plus
/// `self_attn.{q,k,v}_proj.bias` for Qwen2 and `self_attn.{q,k}_norm.weight` (`[head_dim]`) for
/// Qwen3. `lm_head.weight` is listed only for an untied model.
pub fn expected_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut v = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![c.q_dim(), h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![c.kv_dim(), h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![c.kv_dim(), h]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, c.q_dim()]));
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        if c.architecture.qkv_bias() {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![c.q_dim()]));
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![c.kv_dim()]));
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![c.kv_dim()]));
        }
        if c.architecture.qk_norm() {
            v.push((format!("{p}.self_attn.q_norm.weight"), vec![c.head_dim]));
            v.push((format!("{p}.self_attn.k_norm.weight"), vec![c.head_dim]));
        }
    }
    v
}

/// Accounts for every tensor of a checkpoint before anything is packed: each tensor of
/// [`expected_tensors`] must be present with its shape, and every other tensor must be one of the
/// provably derivable ones below, which are checked against what they duplicate and then removed
/// from `t`. On success `t` holds exactly the expected tensors.
///
/// Skipped, each only after the check:
/// * `model.rotary_emb.inv_freq` / `model.layers.{l}.self_attn.rotary_emb.inv_freq`: the RoPE
///   frequency buffer older HF checkpoints saved; it must equal the frequencies computed from
///   `rope_theta`, `head_dim` and the scaling (with or without the scaling applied, as
///   transformers versions differ), within the rounding of a 16-bit float.
/// * `lm_head.weight` of a model with `tie_word_embeddings`: it must equal
///   `model.embed_tokens.weight` value for value (transformers ties them, so a different matrix
///   would be silently replaced; that is refused instead).
///
/// Errors (INVALID_MODEL, naming the tensor): a missing tensor, a wrong shape, an unused tensor
/// (with up to 5 names and the count of the others), a derivable tensor that does not match.
pub fn account_tensors(c: &ModelConfig, t: &mut TensorMap) -> Result<()> {
    check_layer_count(c, t.len(), "num_hidden_layers")?;
    let expected = expected_tensors(c);
    for (name, shape) in &expected {
        let got = t
            .get(name)
            .ok_or_else(|| Error::invalid_model(format!("missing tensor \"{name}\"")))?;
        if &got.shape != shape {
            return Err(Error::invalid_model(format!(
                "tensor \"{name}\" has shape {:?}, expected {shape:?} from the model config",
                got.shape
            )));
        }
    }
    let wanted: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut unused: Vec<&String> = Vec::new();
    let mut derivable: Vec<String> = Vec::new();
    for (name, tensor) in t.iter() {
        if wanted.contains(name.as_str()) {
            continue;
        }
        if is_inv_freq(c, name) {
            check_inv_freq(c, name, tensor)?;
            derivable.push(name.clone());
        } else if name == "lm_head.weight" && c.tie_word_embeddings {
            check_tied_head(t, tensor)?;
            derivable.push(name.clone());
        } else {
            unused.push(name);
        }
    }
    if !unused.is_empty() {
        unused.sort();
        let shown: Vec<String> = unused.iter().take(5).map(|n| format!("\"{n}\"")).collect();
        let more = match unused.len() {
            n if n > 5 => format!(" and {} more", n - 5),
            _ => String::new(),
        };
        return Err(Error::invalid_model(format!(
            "tensor {}{more} not used by a {}-layer {} model (loraplex refuses a checkpoint it \
             would apply only in part: biases, extra norms or layers the architecture does not \
             have are not supported)",
            shown.join(", "),
            c.num_layers,
            c.architecture
        )));
    }
    for name in derivable {
        t.remove(&name);
    }
    Ok(())
}

/// `model.rotary_emb.inv_freq` or `model.layers.{l}.self_attn.rotary_emb.inv_freq` with
/// `l < num_layers`.
fn is_inv_freq(c: &ModelConfig, name: &str) -> bool {
    if name == "model.rotary_emb.inv_freq" {
        return true;
    }
    name.strip_prefix("model.layers.")
        .and_then(|r| r.strip_suffix(".self_attn.rotary_emb.inv_freq"))
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l < c.num_layers)
}

fn check_inv_freq(c: &ModelConfig, name: &str, t: &HostTensor) -> Result<()> {
    let scaled = c.rope_inv_freq();
    if t.shape != [scaled.len()] {
        return Err(Error::invalid_model(format!(
            "tensor \"{name}\" has shape {:?}, expected [{}] (head_dim / 2)",
            t.shape,
            scaled.len()
        )));
    }
    let unscaled = ModelConfig {
        rope_scaling: RopeScaling::None,
        ..c.clone()
    }
    .rope_inv_freq();
    let got = t.to_f32_vec();
    // 1% covers bf16/f16 rounding of the stored buffer; 1e-7 covers f16 subnormals.
    let close = |want: &[f32]| {
        got.iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= 1e-2 * w.abs() + 1e-7)
    };
    if close(&scaled) || close(&unscaled) {
        return Ok(());
    }
    Err(Error::invalid_model(format!(
        "tensor \"{name}\" does not match the RoPE frequencies computed from rope_theta {} and \
         head_dim {} (the config and the checkpoint disagree)",
        c.rope_theta, c.head_dim
    )))
}

fn check_tied_head(t: &TensorMap, head: &HostTensor) -> Result<()> {
    let embed = t.get("model.embed_tokens.weight").ok_or_else(|| {
        Error::invalid_model("missing tensor \"model.embed_tokens.weight\"".to_string())
    })?;
    if head.shape == embed.shape && same_values(&head.data, &embed.data) {
        return Ok(());
    }
    Err(Error::invalid_model(
        "tensor \"lm_head.weight\" differs from \"model.embed_tokens.weight\" but the config sets \
         tie_word_embeddings = true (transformers would use the embedding); fix the config or \
         the checkpoint",
    ))
}

/// Value-for-value equality (bitwise for equal dtypes, exact f32 conversion otherwise).
fn same_values(a: &TensorData, b: &TensorData) -> bool {
    fn as_f32(d: &TensorData) -> Box<dyn Iterator<Item = f32> + '_> {
        match d {
            TensorData::F32(v) => Box::new(v.iter().copied()),
            TensorData::F16(v) => Box::new(v.iter().map(|x| x.to_f32())),
            TensorData::BF16(v) => Box::new(v.iter().map(|x| x.to_f32())),
            TensorData::Quant(_) => Box::new(d.to_f32_vec().into_iter()),
        }
    }
    match (a, b) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (TensorData::F16(x), TensorData::F16(y)) => x == y,
        (TensorData::BF16(x), TensorData::BF16(y)) => x == y,
        _ => as_f32(a).eq(as_f32(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tied: bool) -> ModelConfig {
        ModelConfig {
            architecture: super::super::Architecture::Llama,
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            vocab_size: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Linear { factor: 2.0 },
            max_position_embeddings: 64,
            sliding_window: None,
            sliding_layers: None,
            tie_word_embeddings: tied,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
        }
    }

    fn full(c: &ModelConfig) -> TensorMap {
        expected_tensors(c)
            .into_iter()
            .enumerate()
            .map(|(k, (n, s))| {
                let len = s.iter().product();
                (n, HostTensor::f32(s, vec![k as f32; len]))
            })
            .collect()
    }

    #[test]
    fn exact_checkpoint_passes_and_extras_are_named() {
        let c = cfg(false);
        let mut t = full(&c);
        account_tensors(&c, &mut t).unwrap();
        assert_eq!(t.len(), expected_tensors(&c).len());

        let mut t = full(&c);
        t.insert(
            "model.layers.1.self_attn.q_proj.bias".into(),
            HostTensor::f32(vec![8], vec![0.0; 8]),
        );
        let e = account_tensors(&c, &mut t).unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::InvalidModel);
        assert!(
            e.message().contains("model.layers.1.self_attn.q_proj.bias"),
            "{}",
            e.message()
        );

        let mut t = full(&c);
        t.remove("model.layers.1.mlp.up_proj.weight");
        let e = account_tensors(&c, &mut t).unwrap_err();
        assert!(e.message().contains("mlp.up_proj"), "{}", e.message());
    }

    #[test]
    fn qwen_extras_are_expected_and_absent_from_llama() {
        use super::super::Architecture;
        let names = |arch| {
            let c = ModelConfig {
                architecture: arch,
                ..cfg(false)
            };
            expected_tensors(&c)
                .into_iter()
                .filter(|(n, _)| n.ends_with(".bias") || n.contains("_norm."))
                .collect::<Vec<_>>()
        };
        assert!(names(Architecture::Llama).is_empty());
        assert!(names(Architecture::Mistral).is_empty());
        let q2 = names(Architecture::Qwen2);
        assert_eq!(q2.len(), 6);
        assert!(q2.contains(&("model.layers.1.self_attn.k_proj.bias".into(), vec![4])));
        let q3 = names(Architecture::Qwen3);
        assert!(q3.contains(&("model.layers.0.self_attn.q_norm.weight".into(), vec![4])));
        assert_eq!(q3.len(), 4);
        // A Qwen3 checkpoint handed to a Llama config: its norms are unused, named.
        let c3 = ModelConfig {
            architecture: Architecture::Qwen3,
            ..cfg(false)
        };
        let mut t = full(&c3);
        let e = account_tensors(&cfg(false), &mut t).unwrap_err();
        assert!(e.message().contains("q_norm.weight"), "{}", e.message());
        assert!(e.message().contains("Llama"), "{}", e.message());
    }

    #[test]
    fn inv_freq_is_skipped_only_when_it_matches() {
        let c = cfg(false);
        for (freq, name) in [
            (
                c.rope_inv_freq(),
                "model.layers.0.self_attn.rotary_emb.inv_freq",
            ),
            (
                ModelConfig {
                    rope_scaling: RopeScaling::None,
                    ..c.clone()
                }
                .rope_inv_freq(),
                "model.rotary_emb.inv_freq",
            ),
        ] {
            let mut t = full(&c);
            t.insert(name.into(), HostTensor::f32(vec![2], freq.clone()));
            account_tensors(&c, &mut t).unwrap();
            assert!(!t.contains_key(name));
            let mut t = full(&c);
            let wrong: Vec<f32> = freq.iter().map(|f| f * 1.5).collect();
            t.insert(name.into(), HostTensor::f32(vec![2], wrong));
            let e = account_tensors(&c, &mut t).unwrap_err();
            assert!(e.message().contains(name), "{}", e.message());
        }
        // A layer the model does not have is not a derivable buffer.
        let mut t = full(&c);
        let name = "model.layers.2.self_attn.rotary_emb.inv_freq";
        t.insert(name.into(), HostTensor::f32(vec![2], c.rope_inv_freq()));
        let e = account_tensors(&c, &mut t).unwrap_err();
        assert!(e.message().contains(name), "{}", e.message());
    }

    #[test]
    fn tied_head_is_skipped_only_when_equal_to_the_embedding() {
        let c = cfg(true);
        let mut t = full(&c);
        let embed = t["model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), embed.clone());
        account_tensors(&c, &mut t).unwrap();
        assert!(!t.contains_key("lm_head.weight"));

        let mut t = full(&c);
        let mut other = embed.to_f32_vec();
        other[3] += 1.0;
        t.insert(
            "lm_head.weight".into(),
            HostTensor::f32(embed.shape.clone(), other),
        );
        let e = account_tensors(&c, &mut t).unwrap_err();
        assert!(e.message().contains("lm_head.weight"), "{}", e.message());
        assert!(
            e.message().contains("tie_word_embeddings"),
            "{}",
            e.message()
        );
    }
}
