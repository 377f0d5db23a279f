//! Several choices per request (`n`, `best_of`), logit biases, prompt log-probabilities and echo
//! on a tiny random model: each choice as the engine would compute it alone, the prompt's KV
//! blocks computed once, batch-invariant results.

mod common;

use loraplex::engine::{FinishReason, Output, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::ErrorCode;

use common::tiny_engine;

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|k| ((k * 37 + salt * 11) % 256) as u32)
        .collect()
}

fn sampled(max_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(seed),
        ignore_eos: true,
        logprobs: Some(2),
        ..SamplingParams::default()
    }
}

fn req(p: Vec<u32>, sampling: SamplingParams, n: usize) -> Request {
    Request {
        prompt: Prompt::Tokens(p),
        sampling,
        n,
        ..Request::default()
    }
}

/// The parts of an output that must agree bitwise between two runs of the same choice.
fn key(o: &Output) -> (Vec<u32>, Vec<u32>, Option<FinishReason>) {
    (
        o.token_ids.clone(),
        o.logprobs.iter().map(|l| l.logprob.to_bits()).collect(),
        o.finish_reason,
    )
}

#[test]
fn n_choices_share_the_prompt_and_choice_0_is_the_single_request() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |c| c.max_batch_tokens = 64);
    let bs = engine.stats().kv_block_size;
    let p = prompt(5 * bs + 3, 1);
    let single = engine.generate(req(p.clone(), sampled(24, 7), 1)).unwrap();
    let before = engine.stats().prompt_tokens_shared;
    let all = engine
        .generate_all(req(p.clone(), sampled(24, 7), 4))
        .unwrap();
    assert_eq!(all.len(), 4);
    for (i, o) in all.iter().enumerate() {
        assert_eq!(o.index, i);
        assert_eq!(o.token_ids.len(), 24);
        assert_eq!(o.finish_reason, Some(FinishReason::Length));
        assert_eq!(o.usage.prompt_tokens, p.len());
        assert_eq!(o.usage.completion_tokens, 24);
    }
    assert_eq!(
        all.iter().filter(|o| o.done).count(),
        1,
        "one output ends the request"
    );
    assert_eq!(key(&all[0]), key(&single), "choice 0 is the n = 1 result");
    let distinct: std::collections::HashSet<_> = all.iter().map(|o| o.token_ids.clone()).collect();
    assert!(distinct.len() >= 3, "choices draw from their own streams");
    // The three other choices shared the prompt's full blocks before its last position.
    let shared = engine.stats().prompt_tokens_shared - before;
    assert_eq!(shared, 3 * (5 * bs) as u64);
    // Reproducible, and each choice is what it is without the others' company: run the same
    // request next to unrelated traffic.
    let noise: Vec<_> = (0..3)
        .map(|k| {
            engine
                .submit(req(prompt(9 + k, 5), sampled(30, k as u64), 2))
                .unwrap()
        })
        .collect();
    let again = engine.generate_all(req(p, sampled(24, 7), 4)).unwrap();
    for id in noise {
        engine.wait_all(id).unwrap();
    }
    for (a, b) in all.iter().zip(&again) {
        assert_eq!(key(a), key(b));
    }
    assert_eq!(
        common::idle_stats(&engine).kv_blocks_free,
        engine.stats().kv_blocks_total,
        "no block leaked"
    );
}

#[test]
fn choices_survive_preemption_and_a_tight_cache() {
    let dir = tempfile::tempdir().unwrap();
    // A cache of a few blocks: choices are preempted and recomputed, never wrong.
    let free = tiny_engine(dir.path(), |c| c.max_batch_tokens = 64);
    let bs = free.stats().kv_block_size;
    let p = prompt(3 * bs + 1, 2);
    let want = free
        .generate_all(req(p.clone(), sampled(2 * bs, 3), 3))
        .unwrap();
    drop(free);
    let dir2 = tempfile::tempdir().unwrap();
    let spec = common::TinySpec::default();
    let bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * 4;
    // 10 blocks: the three choices need 12 even with the prompt shared.
    let tight = tiny_engine(dir2.path(), |c| {
        c.max_batch_tokens = 64;
        c.kv_block_size = bs;
        c.kv_cache_bytes = bytes_per_token * bs * 10;
    });
    let got = tight.generate_all(req(p, sampled(2 * bs, 3), 3)).unwrap();
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(key(a), key(b));
    }
    let st = common::idle_stats(&tight);
    assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "no block leaked");
}

#[test]
fn best_of_returns_the_best_mean_logprob_choices() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    let p = prompt(20, 3);
    let all = engine
        .generate_all(req(p.clone(), sampled(12, 11), 5))
        .unwrap();
    let mut r = req(p, sampled(12, 11), 2);
    r.best_of = Some(5);
    let best = engine.generate_all(r).unwrap();
    assert_eq!(best.len(), 2);
    let mean = |o: &Output| o.cumulative_logprob / o.usage.completion_tokens as f64;
    let mut ranked: Vec<&Output> = all.iter().collect();
    ranked.sort_by(|a, b| mean(b).total_cmp(&mean(a)).then(a.index.cmp(&b.index)));
    for (i, (got, want)) in best.iter().zip(ranked).enumerate() {
        assert_eq!(got.index, i);
        assert_eq!(got.token_ids, want.token_ids);
    }
    let sum: f64 = best[0].logprobs.iter().map(|l| f64::from(l.logprob)).sum();
    assert!((sum - best[0].cumulative_logprob).abs() < 1e-6);
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    let greedy = SamplingParams {
        max_tokens: 16,
        temperature: 0.0,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let p = prompt(12, 4);
    let plain = engine.generate(req(p.clone(), greedy.clone(), 1)).unwrap();
    let forced = engine
        .generate(req(
            p.clone(),
            SamplingParams {
                logit_bias: vec![(65, 100.0)],
                ..greedy.clone()
            },
            1,
        ))
        .unwrap();
    assert!(
        forced.token_ids.iter().all(|&t| t == 65),
        "{:?}",
        forced.token_ids
    );
    let banned: Vec<(u32, f32)> = plain
        .token_ids
        .iter()
        .map(|&t| (t, -100.0))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let out = engine
        .generate(req(
            p,
            SamplingParams {
                logit_bias: banned.clone(),
                ..greedy
            },
            1,
        ))
        .unwrap();
    assert!(out
        .token_ids
        .iter()
        .all(|t| !banned.iter().any(|(b, _)| b == t)));
    // Out-of-range ids and values are refused, naming the field.
    let bad = engine.submit(req(
        prompt(4, 0),
        SamplingParams {
            logit_bias: vec![(100_000, 1.0)],
            ..SamplingParams::default()
        },
        1,
    ));
    let e = bad.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("logit_bias"), "{}", e.message());
    let e = engine
        .submit(req(
            prompt(4, 0),
            SamplingParams {
                logit_bias: vec![(3, 101.0)],
                ..SamplingParams::default()
            },
            1,
        ))
        .unwrap_err();
    assert!(e.message().contains("logit_bias[3]"), "{}", e.message());
}

#[test]
fn prompt_logprobs_match_the_last_position_logits_of_each_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |c| c.max_batch_tokens = 16);
    let p = prompt(37, 6);
    let mut s = sampled(3, 1);
    s.prompt_logprobs = Some(3);
    let mut r = req(p.clone(), s, 2);
    r.echo = true;
    let outs = engine.generate_all(r).unwrap();
    for o in &outs {
        let po = o.prompt.as_ref().expect("prompt with echo");
        assert_eq!(po.token_ids, p);
        assert_eq!(po.logprobs.len(), p.len() - 1);
        assert_eq!(po.logprobs, outs[0].prompt.as_ref().unwrap().logprobs);
    }
    let lps = &outs[0].prompt.as_ref().unwrap().logprobs;
    for pos in [0usize, 1, 15, 16, 17, 35] {
        let want = engine
            .generate(req(
                p[..=pos].to_vec(),
                SamplingParams {
                    max_tokens: 1,
                    return_last_logits: true,
                    ..SamplingParams::default()
                },
                1,
            ))
            .unwrap();
        let row = want.last_logits.unwrap();
        let (lp, top) = loraplex::sampling::prompt_logprob(&row, p[pos + 1], 3);
        assert_eq!(lps[pos].token, p[pos + 1]);
        assert_eq!(lps[pos].logprob.to_bits(), lp.to_bits(), "position {pos}");
        assert_eq!(lps[pos].top, top);
        assert_eq!(lps[pos].top.len(), 3);
    }
}

#[test]
fn echo_returns_the_prompt_text_once_per_choice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    let r = Request {
        prompt: Prompt::Text("hello there".into()),
        sampling: sampled(4, 2),
        n: 2,
        echo: true,
        ..Request::default()
    };
    let id = engine.submit(r).unwrap();
    let mut prompts = [0usize; 2];
    loop {
        let Some(o) = engine
            .poll(id, std::time::Duration::from_millis(100))
            .unwrap()
        else {
            continue;
        };
        if let Some(po) = &o.prompt {
            assert_eq!(po.text, "hello there");
            assert!(po.logprobs.is_empty());
            prompts[o.index] += 1;
        }
        if o.done {
            break;
        }
    }
    assert_eq!(prompts, [1, 1]);
}

#[test]
fn bad_choice_counts_are_refused_and_cancel_ends_every_choice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    for (n, best_of) in [(0, None), (65, None), (3, Some(2)), (1, Some(65))] {
        let mut r = req(prompt(4, 0), sampled(4, 0), n);
        r.best_of = best_of;
        let e = engine.submit(r).unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::InvalidArgument,
            "n {n} best_of {best_of:?}"
        );
    }
    let e = engine
        .generate(req(prompt(4, 0), sampled(4, 0), 2))
        .unwrap_err();
    assert!(e.message().contains("generate_all"), "{}", e.message());
    let id = engine
        .submit(req(prompt(8, 1), sampled(100_000, 0), 3))
        .unwrap();
    engine.cancel(id).unwrap();
    let outs = engine.wait_all(id).unwrap();
    assert_eq!(outs.len(), 3);
    // Each choice ends: cancelled, or (on a very slow machine) at the model's length limit
    // before the cancel arrived.
    assert!(outs.iter().all(|o| matches!(
        o.finish_reason,
        Some(FinishReason::Cancelled | FinishReason::Length)
    )));
    let st = common::idle_stats(&engine);
    assert_eq!((st.running, st.waiting), (0, 0));
}
