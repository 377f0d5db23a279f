//! Which checkpoint tensors each packed weight matrix of a model holds: the one list that both
//! the loader ([`super::llama::Llama::load`]) packs from and the capacity planner
//! ([`crate::cache::capacity`]) sizes from, so the two cannot disagree on what is packed (and
//! counted in the weights bytes) and how.
//!
//! The token embedding, the output head (none when tied: the embedding is the head), and per
//! layer the fused q/k/v, o, the fused gate/up and down. Norms, biases and q/k norms are plain
//! buffers, not packed weights. Pure data; no I/O.

use super::weight_quant::MixRole;
use super::ModelConfig;

/// One part of a packed weight: the HF name of its tensor and its role in the quantization mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightPart {
    /// HF tensor name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Its role in the mix ([`super::weight_quant`]).
    pub role: MixRole,
}

/// The packed weights of one decoder layer, each as its parts in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWeights {
    /// q, k, v stacked.
    pub qkv: Vec<WeightPart>,
    /// The output projection.
    pub o: Vec<WeightPart>,
    /// gate, up stacked.
    pub gate_up: Vec<WeightPart>,
    /// The down projection.
    pub down: Vec<WeightPart>,
}

/// Every packed weight of a model, each as its parts in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedWeights {
    /// The token embedding (the head too when tied).
    pub embed: Vec<WeightPart>,
    /// The output head of an untied model.
    pub lm_head: Option<Vec<WeightPart>>,
    /// Per decoder layer.
    pub layers: Vec<LayerWeights>,
}

impl PackedWeights {
    /// The packed weights of a model with config `c`.
    pub fn of(c: &ModelConfig) -> Self {
        let part = |name: String, role| WeightPart { name, role };
        let tied = c.tie_word_embeddings;
        // A tied embedding is also the head.
        let embed_role = if tied {
            MixRole::Head
        } else {
            MixRole::Embedding
        };
        let layers = (0..c.num_layers)
            .map(|l| {
                let p = |s: &str, role| part(format!("model.layers.{l}.{s}.weight"), role);
                let other = MixRole::Projection;
                LayerWeights {
                    qkv: vec![
                        p("self_attn.q_proj", other),
                        p("self_attn.k_proj", other),
                        p("self_attn.v_proj", MixRole::AttnV { layer: l }),
                    ],
                    o: vec![p("self_attn.o_proj", other)],
                    gate_up: vec![p("mlp.gate_proj", other), p("mlp.up_proj", other)],
                    down: vec![p("mlp.down_proj", MixRole::FfnDown { layer: l })],
                }
            })
            .collect();
        Self {
            embed: vec![part("model.embed_tokens.weight".into(), embed_role)],
            lm_head: (!tied).then(|| vec![part("lm_head.weight".into(), MixRole::Head)]),
            layers,
        }
    }

    /// Every packed weight, in load order.
    pub fn all(&self) -> Vec<&[WeightPart]> {
        let mut v: Vec<&[WeightPart]> = vec![&self.embed];
        v.extend(self.lm_head.as_deref());
        for l in &self.layers {
            v.extend([&l.qkv[..], &l.o, &l.gate_up, &l.down]);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::expected_tensors;

    #[test]
    fn every_packed_part_is_an_expected_matrix_once() {
        let mut c = crate::model::ModelConfig::from_hf_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "max_position_embeddings": 128}"#,
        )
        .unwrap();
        for tied in [false, true] {
            c.tie_word_embeddings = tied;
            let w = PackedWeights::of(&c);
            let names: Vec<&str> = w
                .all()
                .into_iter()
                .flatten()
                .map(|p| p.name.as_str())
                .collect();
            // Every 2-D expected tensor (the matrices) is packed exactly once; nothing else is.
            let mut want: Vec<String> = expected_tensors(&c)
                .into_iter()
                .filter(|(_, s)| s.len() == 2)
                .map(|(n, _)| n)
                .collect();
            let mut got: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "tied {tied}");
            assert_eq!(w.all().len(), 1 + usize::from(!tied) + 4 * 3);
            assert_eq!(
                w.embed[0].role,
                if tied {
                    MixRole::Head
                } else {
                    MixRole::Embedding
                }
            );
        }
    }
}
