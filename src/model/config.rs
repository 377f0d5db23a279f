//! The base model's shape and hyper-parameters ([`ModelConfig`]), read from a HuggingFace
//! `config.json` (Llama family) or filled in from GGUF metadata.

use std::path::Path;

use serde_json::Value;

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
}

/// Shape and hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
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
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::invalid_model(format!(
                "model config: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
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

    /// Parses the text of a HuggingFace `config.json` for a Llama-family model.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_model(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid_model("config.json is not a JSON object"))?;
        let arch_ok = match obj.get("architectures").and_then(Value::as_array) {
            Some(a) => a.iter().any(|x| {
                matches!(
                    x.as_str(),
                    Some("LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM")
                )
            }),
            None => matches!(
                obj.get("model_type").and_then(Value::as_str),
                Some("llama" | "mistral")
            ),
        };
        if !arch_ok {
            let got = obj
                .get("architectures")
                .or_else(|| obj.get("model_type"))
                .cloned()
                .unwrap_or(Value::Null);
            return Err(Error::unsupported(format!(
                "unsupported architecture {got}: loraplex serves Llama-family models (LlamaForCausalLM)"
            )));
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if obj.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(Error::unsupported(format!(
                    "field {flag}=true is not supported"
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
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let cfg = ModelConfig {
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
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
            bos_token_id: obj
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
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
}
