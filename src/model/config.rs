//! The base model's shape and hyper-parameters ([`ModelConfig`]), read from a HuggingFace
//! `config.json` (Llama, Mistral, Qwen2, Qwen3: [`Architecture`]) or filled in from GGUF metadata.

use std::path::Path;

use serde_json::{Map, Value};

pub use super::arch::Architecture;
use crate::error::{Error, Result};

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama-3 style frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 {
        /// `factor`.
        factor: f32,
        /// `low_freq_factor`.
        low_freq_factor: f32,
        /// `high_freq_factor`.
        high_freq_factor: f32,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: usize,
    },
    /// Linear position interpolation (`rope_type: "linear"`): positions divided by `factor`.
    Linear {
        /// `factor`.
        factor: f32,
    },
    /// Per-frequency divisors (llama.cpp's `rope_freqs.weight` tensor, which its converter
    /// writes for llama3 scaling): `inv_freq[i] = theta^(-2i/head_dim) / factors[i]`.
    FreqFactors(Vec<f32>),
}

/// Shape and hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The decoder family (which extra tensors it has: biases, q/k norms).
    pub architecture: Architecture,
    /// Hidden size (d_model).
    pub hidden_size: usize,
    /// MLP intermediate size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA); divides `num_heads`.
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Sliding-window attention span (None = full attention): a query at position `p` attends
    /// to keys at positions `p - w < k <= p` (transformers' `sliding_window_overlay`). Applied
    /// on the layers [`Self::sliding_layers`] selects.
    pub sliding_window: Option<usize>,
    /// Which layers use [`Self::sliding_window`] (Qwen2/Qwen3 `layer_types`); None = every layer
    /// (Mistral, GGUF). When set, it has one entry per layer.
    pub sliding_layers: Option<Vec<bool>>,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// BOS token id, if any.
    pub bos_token_id: Option<u32>,
    /// EOS token ids (may be several).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Query projection width (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Key/value projection width (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The attention window of layer `layer` (None = full causal attention).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let on = match &self.sliding_layers {
            None => true,
            Some(v) => v.get(layer).copied().unwrap_or(false),
        };
        self.sliding_window.filter(|_| on)
    }

    /// Checks internal consistency; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid_model(format!(
                    "model config: {name} must be > 0"
                )));
            }
        }
        if self.sliding_window == Some(0) {
            return Err(Error::invalid_model(
                "model config: sliding_window must be > 0 (or null for no window)",
            ));
        }
        if let Some(v) = &self.sliding_layers {
            if v.len() != self.num_layers {
                return Err(Error::invalid_model(format!(
                    "model config: layer_types has {} entries for {} layers",
                    v.len(),
                    self.num_layers
                )));
            }
        }
        if let RopeScaling::FreqFactors(f) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 || f.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(Error::invalid_model(format!(
                    "RoPE frequency factors: expected {} positive finite values (head_dim / 2), \
                     got {} ({:?}...)",
                    self.head_dim / 2,
                    f.len(),
                    &f[..f.len().min(4)]
                )));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::invalid_model(format!(
                "model config: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid_model(format!(
                "model config: head_dim ({}) must be even for RoPE",
                self.head_dim
            )));
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
        {
            return Err(Error::invalid_model(
                "model config: rope_theta and rms_norm_eps must be > 0",
            ));
        }
        Ok(())
    }

    /// Reads `dir/config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_hf_json(&text).map_err(|e| e.context(path.display()))
    }

    /// Parses the text of a HuggingFace `config.json` for a supported [`Architecture`].
    /// Errors: UNSUPPORTED for another architecture (naming it), `attention_bias` / `mlp_bias`
    /// (except Qwen2, whose q/k/v biases are part of the architecture), an activation other than
    /// SiLU or an unknown RoPE scaling; INVALID_MODEL for missing or ill-typed fields.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_model(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid_model("config.json is not a JSON object"))?;
        let architecture = hf_architecture(obj)?;
        for flag in ["attention_bias", "mlp_bias"] {
            // transformers' Qwen2 always has q/k/v biases and reads neither flag.
            if architecture == Architecture::Qwen2 {
                break;
            }
            if obj.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(Error::unsupported(format!(
                    "field {flag}=true is not supported for {architecture} (biases on every \
                     projection)"
                )));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::unsupported(format!(
                    "field hidden_act=\"{act}\" is not supported (only silu)"
                )));
            }
        }
        let req = |name: &str| -> Result<usize> {
            obj.get(name)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| {
                    Error::invalid_model(format!("missing or non-integer field \"{name}\""))
                })
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_kv_heads = obj
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = match obj.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            // Qwen3Config's own default (it does not derive head_dim from the hidden size).
            None if architecture == Architecture::Qwen3 => 128,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        // transformers 5 moves rope settings into `rope_parameters`; older files use
        // `rope_theta` + `rope_scaling`. Prefer the newer block when present.
        let rope_params = obj.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| obj.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0) as f32;
        let scaling_obj = match rope_params {
            Some(p) if p.get("rope_type").is_some() || p.get("type").is_some() => Some(p),
            _ => obj.get("rope_scaling").filter(|v| v.is_object()),
        };
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => parse_rope_scaling(s)?,
        };
        let eos_token_ids = token_ids(obj, "eos_token_id", true)?;
        let bos_token_id = token_ids(obj, "bos_token_id", false)?.first().copied();
        let num_layers = req("num_hidden_layers")?;
        let (sliding_window, sliding_layers) = attention_window(obj, architecture, num_layers)?;
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: obj
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: obj
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            sliding_window,
            sliding_layers,
            bos_token_id,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Per-pair inverse frequencies `[head_dim / 2]` after scaling (the RoPE table's input).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / (self.rope_theta as f64).powf((2 * i) as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base.iter().map(|&f| f as f32).collect(),
            RopeScaling::Linear { factor } => {
                base.iter().map(|&f| (f / *factor as f64) as f32).collect()
            }
            RopeScaling::FreqFactors(factors) => base
                .iter()
                .zip(factors)
                .map(|(&f, &d)| (f / d as f64) as f32)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, lo, hi) = (
                    *factor as f64,
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                );
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let out = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        out as f32
                    })
                    .collect()
            }
        }
    }
}

/// The [`Architecture`] a config names (`architectures`, else `model_type`).
fn hf_architecture(obj: &Map<String, Value>) -> Result<Architecture> {
    let archs: Option<Vec<&str>> = obj
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let model_type = obj.get("model_type").and_then(Value::as_str);
    Architecture::from_hf(archs.as_deref(), model_type)
}

/// The attention window and the layers it applies to, as transformers applies them:
/// * Llama: none (`LlamaForCausalLM` ignores a `sliding_window` field; it is still checked).
/// * Mistral: `sliding_window` on every layer.
/// * Qwen2/Qwen3: `sliding_window` only when `use_sliding_window` is true, on the layers whose
///   `layer_types` entry is `"sliding_attention"` (without `layer_types`: layers from
///   `max_window_layers`, default 28, on, as their configs derive it).
///
/// Errors (INVALID_MODEL) name the field: a window that is not a positive integer, a
/// `layer_types` that is not a list of `"full_attention"` / `"sliding_attention"`, one per layer.
fn attention_window(
    obj: &Map<String, Value>,
    arch: Architecture,
    num_layers: usize,
) -> Result<(Option<usize>, Option<Vec<bool>>)> {
    let window = sliding_window(obj)?;
    match arch {
        Architecture::Llama => Ok((None, None)),
        Architecture::Mistral => Ok((window, None)),
        Architecture::Qwen2 | Architecture::Qwen3 => {
            let enabled = obj.get("use_sliding_window").and_then(Value::as_bool) == Some(true);
            let Some(w) = window.filter(|_| enabled) else {
                return Ok((None, None));
            };
            let layers = match obj.get("layer_types") {
                None | Some(Value::Null) => {
                    let first = obj
                        .get("max_window_layers")
                        .and_then(Value::as_u64)
                        .unwrap_or(28) as usize;
                    (0..num_layers).map(|l| l >= first).collect()
                }
                Some(v) => layer_types(v, num_layers)?,
            };
            Ok((Some(w), Some(layers)))
        }
    }
}

/// `layer_types`: one `"full_attention"` or `"sliding_attention"` per layer → sliding or not.
fn layer_types(v: &Value, num_layers: usize) -> Result<Vec<bool>> {
    let bad = || {
        Error::invalid_model(format!(
            "field layer_types is {v}, expected {num_layers} entries of \"full_attention\" or \
             \"sliding_attention\""
        ))
    };
    let list = v
        .as_array()
        .filter(|a| a.len() == num_layers)
        .ok_or_else(bad)?;
    list.iter()
        .map(|x| match x.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(bad()),
        })
        .collect()
}

/// A token-id field: absent or null → none; a non-negative integer → one id; a list of them (only
/// where `list_ok`, as Llama-3's `eos_token_id`) → every id. Anything else (string, float,
/// object, negative, a list with such an element) is an INVALID_MODEL error naming the field.
fn token_ids(obj: &Map<String, Value>, field: &str, list_ok: bool) -> Result<Vec<u32>> {
    let one = |v: &Value, at: &str| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| {
                Error::invalid_model(format!(
                    "field {at} is {v}, expected a token id (a non-negative integer)"
                ))
            })
    };
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if list_ok => a
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, &format!("{field}[{i}]")))
            .collect(),
        Some(v) => one(v, field).map(|id| vec![id]),
    }
}

/// `sliding_window`: absent, null or disabled by `use_sliding_window: false` → None; a positive
/// integer → the window. Anything else is an INVALID_MODEL error naming the field.
fn sliding_window(obj: &Map<String, Value>) -> Result<Option<usize>> {
    if obj.get("use_sliding_window").and_then(Value::as_bool) == Some(false) {
        return Ok(None);
    }
    match obj.get("sliding_window") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|w| usize::try_from(w).ok())
            .filter(|&w| w > 0)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_model(format!(
                    "field sliding_window is {v}, expected a positive integer or null"
                ))
            }),
    }
}

fn parse_rope_scaling(s: &Value) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")
                .ok_or_else(|| Error::invalid_model("rope_scaling: linear needs \"factor\""))?
                as f32,
        }),
        "llama3" => {
            let need = |k: &str| {
                num(k).ok_or_else(|| {
                    Error::invalid_model(format!("rope_scaling: llama3 needs \"{k}\""))
                })
            };
            Ok(RopeScaling::Llama3 {
                factor: need("factor")? as f32,
                low_freq_factor: need("low_freq_factor")? as f32,
                high_freq_factor: need("high_freq_factor")? as f32,
                original_max_position_embeddings: need("original_max_position_embeddings")?
                    as usize,
            })
        }
        other => Err(Error::unsupported(format!(
            "rope_scaling type \"{other}\" is not supported (default, linear, llama3)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama31(rope_in_parameters: bool) -> String {
        let rope = r#""rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192"#;
        let rope_fields = if rope_in_parameters {
            format!(r#""rope_parameters": {{"rope_theta": 500000.0, {rope}}}"#)
        } else {
            format!(r#""rope_theta": 500000.0, "rope_scaling": {{{rope}}}"#)
        };
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "eos_token_id": [128001, 128008, 128009],
            {rope_fields}}}"#
        )
    }

    #[test]
    fn llama3_scaling_from_both_config_styles() {
        for style in [false, true] {
            let c = ModelConfig::from_hf_json(&llama31(style)).unwrap();
            assert_eq!(c.head_dim, 128);
            assert_eq!(c.rope_theta, 500000.0);
            assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
            assert!(matches!(
                c.rope_scaling,
                RopeScaling::Llama3 {
                    original_max_position_embeddings: 8192,
                    ..
                }
            ));
            let plain = ModelConfig {
                rope_scaling: RopeScaling::None,
                ..c.clone()
            }
            .rope_inv_freq();
            let scaled = c.rope_inv_freq();
            // Wavelengths below original/high_freq_factor (2048) keep their frequency; those above
            // original/low_freq_factor (8192) are divided by the factor; in between the scale
            // moves monotonically between the two.
            let mut prev_ratio = 1.0f64;
            for (p, s) in plain.iter().zip(&scaled) {
                let wavelen = 2.0 * std::f64::consts::PI / *p as f64;
                let ratio = *s as f64 / *p as f64;
                if wavelen < 2048.0 {
                    assert!((ratio - 1.0).abs() < 1e-6);
                } else if wavelen > 8192.0 {
                    assert!((ratio - 0.125).abs() < 1e-6);
                } else {
                    assert!((0.125..=1.0).contains(&ratio));
                }
                assert!(
                    ratio <= prev_ratio + 1e-9,
                    "scale must not increase with wavelength"
                );
                prev_ratio = ratio;
            }
            assert!(plain
                .iter()
                .zip(&scaled)
                .any(|(p, s)| (*s as f64 / *p as f64) < 0.99 && (*s as f64 / *p as f64) > 0.13));
        }
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let good = llama31(false);
        let no_layers = good.replace(r#""num_hidden_layers": 32,"#, "");
        let e = ModelConfig::from_hf_json(&no_layers).unwrap_err();
        assert!(e.message().contains("num_hidden_layers"), "{}", e.message());
        let gqa = good.replace(r#""num_key_value_heads": 8"#, r#""num_key_value_heads": 5"#);
        let e = ModelConfig::from_hf_json(&gqa).unwrap_err();
        assert!(
            e.message().contains("num_key_value_heads"),
            "{}",
            e.message()
        );
        let yarn = good.replace("llama3", "yarn");
        let e = ModelConfig::from_hf_json(&yarn).unwrap_err();
        assert!(e.message().contains("yarn"), "{}", e.message());
    }
    #[test]
    fn eos_bos_and_window_fields_are_parsed_strictly() {
        let good = llama31(false);
        let with = |field: &str, value: &str| {
            let mut v: Value = serde_json::from_str(&good).unwrap();
            v[field] = serde_json::from_str(value).unwrap();
            ModelConfig::from_hf_json(&v.to_string())
        };
        assert_eq!(with("eos_token_id", "7").unwrap().eos_token_ids, vec![7]);
        assert_eq!(
            with("eos_token_id", "[7, 9]").unwrap().eos_token_ids,
            vec![7, 9]
        );
        assert!(with("eos_token_id", "null")
            .unwrap()
            .eos_token_ids
            .is_empty());
        for bad in ["\"7\"", "7.5", "-1", "{}", "[7, null]", "4294967296"] {
            let e = with("eos_token_id", bad).unwrap_err();
            assert_eq!(e.code(), crate::error::ErrorCode::InvalidModel);
            assert!(e.message().contains("eos_token_id"), "{}", e.message());
        }
        assert_eq!(with("bos_token_id", "1").unwrap().bos_token_id, Some(1));
        assert_eq!(with("bos_token_id", "null").unwrap().bos_token_id, None);
        let e = with("bos_token_id", "\"<s>\"").unwrap_err();
        assert!(e.message().contains("bos_token_id"), "{}", e.message());

        // Llama ignores a window (as LlamaForCausalLM does) but still checks the field.
        assert_eq!(with("sliding_window", "4096").unwrap().sliding_window, None);
        let mistral = good.replace("LlamaForCausalLM", "MistralForCausalLM");
        let with_m = |field: &str, value: &str| {
            let mut v: Value = serde_json::from_str(&mistral).unwrap();
            v[field] = serde_json::from_str(value).unwrap();
            ModelConfig::from_hf_json(&v.to_string())
        };
        let m = with_m("sliding_window", "4096").unwrap();
        assert_eq!(m.sliding_window, Some(4096));
        assert_eq!(
            (m.layer_window(0), m.layer_window(31)),
            (Some(4096), Some(4096))
        );
        assert_eq!(
            with_m("sliding_window", "null").unwrap().sliding_window,
            None
        );
        assert_eq!(
            ModelConfig::from_hf_json(&mistral).unwrap().sliding_window,
            None
        );
        for bad in ["0", "-5", "\"4096\"", "1.5"] {
            let e = with_m("sliding_window", bad).unwrap_err();
            assert!(e.message().contains("sliding_window"), "{}", e.message());
            let e = with("sliding_window", bad).unwrap_err();
            assert!(e.message().contains("sliding_window"), "{}", e.message());
        }
    }

    #[test]
    fn qwen_windows_follow_use_sliding_window_and_layer_types() {
        let qwen = llama31(false).replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        let with = |edits: &[(&str, &str)]| {
            let mut v: Value = serde_json::from_str(&qwen).unwrap();
            for (k, x) in edits {
                v[*k] = serde_json::from_str(x).unwrap();
            }
            ModelConfig::from_hf_json(&v.to_string())
        };
        // Off unless use_sliding_window is true.
        let c = with(&[("sliding_window", "64")]).unwrap();
        assert_eq!(c.sliding_window, None);
        let c = with(&[("sliding_window", "64"), ("use_sliding_window", "false")]).unwrap();
        assert_eq!(c.sliding_window, None);
        // Derived from max_window_layers without layer_types.
        let c = with(&[
            ("sliding_window", "64"),
            ("use_sliding_window", "true"),
            ("max_window_layers", "30"),
        ])
        .unwrap();
        assert_eq!((c.layer_window(29), c.layer_window(30)), (None, Some(64)));
        // layer_types decides when present.
        let types: Vec<&str> = (0..32)
            .map(|l| {
                if l % 2 == 0 {
                    "\"sliding_attention\""
                } else {
                    "\"full_attention\""
                }
            })
            .collect();
        let list = format!("[{}]", types.join(","));
        let c = with(&[
            ("sliding_window", "64"),
            ("use_sliding_window", "true"),
            ("layer_types", &list),
        ])
        .unwrap();
        assert_eq!((c.layer_window(0), c.layer_window(1)), (Some(64), None));
        for bad in [
            "[\"sliding_attention\"]",
            "\"full\"",
            &list.replace("full_attention", "chunked"),
        ] {
            let e = with(&[
                ("sliding_window", "64"),
                ("use_sliding_window", "true"),
                ("layer_types", bad),
            ])
            .unwrap_err();
            assert!(e.message().contains("layer_types"), "{}", e.message());
        }
    }

    #[test]
    fn zoo_families_are_recognised_and_others_refused_by_name() {
        let good = llama31(false);
        for (class, arch) in [
            ("LlamaForCausalLM", Architecture::Llama),
            ("MistralForCausalLM", Architecture::Mistral),
            ("Qwen2ForCausalLM", Architecture::Qwen2),
            ("Qwen3ForCausalLM", Architecture::Qwen3),
        ] {
            let c = ModelConfig::from_hf_json(&good.replace("LlamaForCausalLM", class)).unwrap();
            assert_eq!(c.architecture, arch);
        }
        // Qwen2's biases are its architecture; elsewhere attention_bias is refused.
        let mut v: Value = serde_json::from_str(&good).unwrap();
        v["attention_bias"] = true.into();
        let e = ModelConfig::from_hf_json(&v.to_string()).unwrap_err();
        assert!(e.message().contains("attention_bias"), "{}", e.message());
        let q = v
            .to_string()
            .replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        assert!(ModelConfig::from_hf_json(&q).is_ok());
        // Qwen3's head_dim defaults to 128, not hidden / heads.
        let mut v: Value =
            serde_json::from_str(&good.replace("LlamaForCausalLM", "Qwen3ForCausalLM")).unwrap();
        v["hidden_size"] = 1024.into();
        v["num_attention_heads"] = 16.into();
        assert_eq!(
            ModelConfig::from_hf_json(&v.to_string()).unwrap().head_dim,
            128
        );
        for other in ["PhiForCausalLM", "Gemma2ForCausalLM", "MixtralForCausalLM"] {
            let e =
                ModelConfig::from_hf_json(&good.replace("LlamaForCausalLM", other)).unwrap_err();
            assert_eq!(e.code(), crate::error::ErrorCode::Unsupported);
            assert!(e.message().contains(other), "{}", e.message());
        }
    }
}
