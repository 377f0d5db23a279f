//! `adapter_config.json` of a HuggingFace PEFT LoRA adapter (adapter-formats.md 1.2–1.4).
//!
//! Parsing refuses every setting whose inference semantics differ from plain LoRA (DoRA, biases,
//! `modules_to_save`, trainable tokens, layer replication, activated LoRA, embedding/lm_head
//! targets and the non-standard variants) with a message naming the adapter and the field.
//! Per-module rank and alpha are resolved exactly as PEFT does: the first `rank_pattern` /
//! `alpha_pattern` key, in file order, for which `re.match(r"(.*\.)?(" + key + r")$", module)`
//! succeeds; otherwise the global `r` / `lora_alpha`.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The parsed, checked adapter config. Immutable; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// Global rank `r`.
    pub r: usize,
    /// Global `lora_alpha`.
    pub lora_alpha: f64,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// `rank_pattern` in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// `alpha_pattern` in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// `target_modules` as written (a list, a regex string, or `all-linear`).
    pub target_modules: Value,
    rank_re: Vec<Regex>,
    alpha_re: Vec<Regex>,
}

/// A JSON object read as key/value pairs in document order (serde_json's map is sorted).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Patterns {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn pattern_regex(key: &str, adapter: &str, field: &str) -> Result<Regex> {
    RegexBuilder::new(&format!(r"^(?:.*\.)?(?:{key})$"))
        .size_limit(1 << 20)
        .nest_limit(64)
        .build()
        .map_err(|e| {
            Error::invalid_adapter(format!(
                "adapter '{adapter}': adapter_config.json {field} key '{key}' is not a valid \
                 pattern: {e}"
            ))
        })
}

impl HfConfig {
    /// Parses and checks `adapter_config.json`. `adapter` names the adapter in errors.
    ///
    /// Errors (`INVALID_ADAPTER`): invalid UTF-8 or JSON; not an object; `peft_type` other than
    /// `LORA`; missing or invalid `r` (≥ 1), `lora_alpha` (finite number) or `target_modules`;
    /// any refused feature (see the module docs); malformed or non-positive pattern values.
    pub fn parse(bytes: &[u8], adapter: &str) -> Result<HfConfig> {
        let ctx = |m: String| Error::invalid_adapter(format!("adapter '{adapter}': {m}"));
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ctx(format!("adapter_config.json is not valid UTF-8: {e}")))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ctx(format!("adapter_config.json is not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ctx("adapter_config.json is not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);

        match get("peft_type") {
            Value::Null => {}
            Value::String(s) if s.eq_ignore_ascii_case("LORA") => {}
            other => {
                return Err(ctx(format!(
                    "adapter_config.json peft_type is {other}, only \"LORA\" is supported"
                )))
            }
        }
        let refuse = |field: &str, why: &str| -> Result<()> {
            if truthy(get(field)) {
                return Err(ctx(format!(
                    "adapter_config.json sets {field}={}: {why} is not supported",
                    get(field)
                )));
            }
            Ok(())
        };
        refuse("use_dora", "DoRA (weight-decomposed LoRA)")?;
        refuse("lora_bias", "a trained LoRA bias (lora_B.bias)")?;
        refuse(
            "modules_to_save",
            "saving full copies of base modules (modules_to_save)",
        )?;
        refuse("trainable_token_indices", "trainable token embeddings")?;
        refuse("layer_replication", "layer replication")?;
        refuse("alora_invocation_tokens", "activated LoRA (aLoRA)")?;
        refuse("target_parameters", "LoRA on raw parameters")?;
        for f in [
            "use_qalora",
            "use_bdlora",
            "kasa_config",
            "velora_config",
            "monteclora_config",
            "arrow_config",
            "megatron_config",
        ] {
            refuse(f, "this LoRA variant")?;
        }
        match get("bias") {
            Value::Null => {}
            Value::String(s) if s == "none" => {}
            other => {
                return Err(ctx(format!(
                    "adapter_config.json sets bias={other}: trained base biases are not \
                     supported (only \"none\")"
                )))
            }
        }
        let r = match get("r") {
            Value::Null => {
                return Err(ctx("adapter_config.json is missing required field r".into()))
            }
            v => v.as_u64().filter(|&r| r >= 1).ok_or_else(|| {
                ctx(format!(
                    "adapter_config.json r is {v}, expected an integer >= 1"
                ))
            })?,
        };
        let r = usize::try_from(r).map_err(|_| ctx(format!("r {r} is too large")))?;
        let lora_alpha = match get("lora_alpha") {
            Value::Null => {
                return Err(ctx(
                    "adapter_config.json is missing required field lora_alpha".into(),
                ))
            }
            v => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                ctx(format!(
                    "adapter_config.json lora_alpha is {v}, expected a number"
                ))
            })?,
        };
        let use_rslora = match get("use_rslora") {
            Value::Null => false,
            Value::Bool(b) => *b,
            v => {
                return Err(ctx(format!(
                    "adapter_config.json use_rslora is {v}, expected a bool"
                )))
            }
        };
        let target_modules = get("target_modules").clone();
        let check_target = |name: &str| -> Result<()> {
            let n = name.rsplit('.').next().unwrap_or(name);
            if n == "embed_tokens" || n == "lm_head" {
                return Err(ctx(format!(
                    "adapter_config.json target_modules includes '{name}': LoRA on the token \
                     embedding / lm_head is not supported"
                )));
            }
            Ok(())
        };
        match &target_modules {
            Value::Null => {
                return Err(ctx(
                    "adapter_config.json is missing required field target_modules".into(),
                ))
            }
            Value::String(s) => check_target(s)?,
            Value::Array(a) => {
                for t in a {
                    let s = t.as_str().ok_or_else(|| {
                        ctx(format!(
                            "adapter_config.json target_modules entry {t} is not a string"
                        ))
                    })?;
                    check_target(s)?;
                }
            }
            other => {
                return Err(ctx(format!(
                    "adapter_config.json target_modules is {other}, expected a list or a string"
                )))
            }
        }

        let pats: Patterns = serde_json::from_str(text).map_err(|e| {
            ctx(format!(
                "adapter_config.json rank_pattern/alpha_pattern: {e}"
            ))
        })?;
        let mut rank_pattern = Vec::new();
        let mut rank_re = Vec::new();
        for (k, v) in pats.rank_pattern.map(|o| o.0).unwrap_or_default() {
            let rv = v
                .as_u64()
                .filter(|&x| x >= 1)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| {
                    ctx(format!(
                        "adapter_config.json rank_pattern['{k}'] is {v}, expected an integer >= 1"
                    ))
                })?;
            rank_re.push(pattern_regex(&k, adapter, "rank_pattern")?);
            rank_pattern.push((k, rv));
        }
        let mut alpha_pattern = Vec::new();
        let mut alpha_re = Vec::new();
        for (k, v) in pats.alpha_pattern.map(|o| o.0).unwrap_or_default() {
            let av = v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                ctx(format!(
                    "adapter_config.json alpha_pattern['{k}'] is {v}, expected a number"
                ))
            })?;
            alpha_re.push(pattern_regex(&k, adapter, "alpha_pattern")?);
            alpha_pattern.push((k, av));
        }
        Ok(HfConfig {
            r,
            lora_alpha,
            use_rslora,
            rank_pattern,
            alpha_pattern,
            target_modules,
            rank_re,
            alpha_re,
        })
    }

    /// `(r_m, alpha_m)` for a module key such as `model.layers.0.self_attn.q_proj` (no
    /// `base_model.model.` prefix): first matching pattern in file order, else the globals.
    pub fn rank_alpha(&self, module_key: &str) -> (usize, f64) {
        let r = self
            .rank_re
            .iter()
            .zip(&self.rank_pattern)
            .find(|(re, _)| re.is_match(module_key))
            .map_or(self.r, |(_, (_, r))| *r);
        let a = self
            .alpha_re
            .iter()
            .zip(&self.alpha_pattern)
            .find(|(re, _)| re.is_match(module_key))
            .map_or(self.lora_alpha, |(_, (_, a))| *a);
        (r, a)
    }

    /// PEFT's scale for a module: `alpha_m / sqrt(r_m)` with rsLoRA, else `alpha_m / r_m`,
    /// computed in f64 and rounded once to f32.
    pub fn scale(&self, module_key: &str) -> f32 {
        let (r, a) = self.rank_alpha(module_key);
        let r = r as f64;
        (if self.use_rslora { a / r.sqrt() } else { a / r }) as f32
    }
}
