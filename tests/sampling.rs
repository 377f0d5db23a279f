//! Sampling parameters, the Sampler and the StopMatcher (pure logic, no fixtures).

use loraplex::sampling::{apply_penalties, Sampler, SamplingParams, StopMatcher, MAX_LOGPROBS};
use loraplex::ErrorCode;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn params() -> SamplingParams {
    SamplingParams::default()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    logits.iter().map(|&l| l as f64 - m - s.ln()).collect()
}

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-5.0f32..5.0)).collect()
}

/// Token ids sorted by decreasing logit, ties by increasing id.
fn ranked(logits: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .partial_cmp(&logits[a as usize])
            .unwrap()
            .then(a.cmp(&b))
    });
    ids
}

fn counts(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
    let mut c = vec![0usize; logits.len()];
    for _ in 0..n {
        c[sampler.sample(logits, &[]).token as usize] += 1;
    }
    c
}

// ---------------------------------------------------------------- validate

#[test]
fn default_params_are_valid_and_documented_values() {
    let p = params();
    p.validate().unwrap();
    assert_eq!(p.max_tokens, 16);
    assert_eq!(p.temperature, 1.0);
    assert_eq!(p.top_p, 1.0);
    assert_eq!(p.top_k, 0);
    assert_eq!(p.min_p, 0.0);
    assert_eq!(p.repetition_penalty, 1.0);
    assert_eq!(p.logprobs, None);
}

#[test]
fn validate_errors_name_field_and_value() {
    type Edit = fn(&mut SamplingParams);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (|p| p.max_tokens = 0, "max_tokens", "0"),
        (|p| p.temperature = -0.5, "temperature", "-0.5"),
        (|p| p.temperature = f32::NAN, "temperature", "NaN"),
        (|p| p.temperature = f32::INFINITY, "temperature", "inf"),
        (|p| p.top_p = 0.0, "top_p", "0"),
        (|p| p.top_p = 1.5, "top_p", "1.5"),
        (|p| p.top_p = f32::NAN, "top_p", "NaN"),
        (|p| p.min_p = -0.1, "min_p", "-0.1"),
        (|p| p.min_p = 1.25, "min_p", "1.25"),
        (|p| p.logprobs = Some(21), "logprobs", "21"),
        (|p| p.repetition_penalty = 0.0, "repetition_penalty", "0"),
        (|p| p.repetition_penalty = -1.0, "repetition_penalty", "-1"),
        (|p| p.presence_penalty = 2.5, "presence_penalty", "2.5"),
        (|p| p.frequency_penalty = -3.0, "frequency_penalty", "-3"),
        (
            |p| p.frequency_penalty = f32::NAN,
            "frequency_penalty",
            "NaN",
        ),
        (
            |p| p.stop = vec!["ok".into(), String::new()],
            "stop[1]",
            "\"\"",
        ),
    ];
    for (edit, field, value) in cases {
        let mut p = params();
        edit(&mut p);
        let err = p.validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{field}");
        let msg = err.message();
        assert!(msg.contains(field), "{msg:?} should name {field}");
        assert!(msg.contains(value), "{msg:?} should contain {value}");
    }
}

#[test]
fn validate_accepts_boundaries() {
    let mut p = params();
    p.temperature = 0.0;
    p.top_p = 1.0;
    p.min_p = 1.0;
    p.logprobs = Some(MAX_LOGPROBS);
    p.presence_penalty = -2.0;
    p.frequency_penalty = 2.0;
    p.repetition_penalty = 0.01;
    p.stop = vec!["x".into()];
    p.validate().unwrap();
    p.min_p = 0.0;
    p.logprobs = Some(0);
    p.top_p = f32::MIN_POSITIVE;
    p.validate().unwrap();
}

// ---------------------------------------------------------------- greedy

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut p = params();
    p.temperature = 0.0;
    let mut s = Sampler::new(&p, 7);
    assert_eq!(s.sample(&[1.0, 3.0, 2.0], &[]).token, 1);
    assert_eq!(s.sample(&[1.0, 5.0, 5.0, 0.0], &[]).token, 1);
    assert_eq!(s.sample(&[4.0, 4.0, 4.0], &[]).token, 0);
    assert_eq!(s.sample(&[f32::NAN, -1.0, -2.0], &[]).token, 1);
    let logits = random_logits(49152, 3);
    let want = ranked(&logits)[0];
    let got = s.sample(&logits, &[]);
    assert_eq!(got.token, want);
    let lp = log_softmax(&logits)[want as usize];
    assert!(
        (got.logprob as f64 - lp).abs() < 1e-4,
        "{} vs {lp}",
        got.logprob
    );
}

#[test]
fn top_k_one_equals_greedy() {
    let mut g = params();
    g.temperature = 0.0;
    let mut k1 = params();
    k1.top_k = 1;
    k1.temperature = 1.5;
    k1.seed = Some(99);
    let mut sg = Sampler::new(&g, 1);
    let mut sk = Sampler::new(&k1, 2);
    for seed in 0..20 {
        let logits = random_logits(5000, seed);
        assert_eq!(sg.sample(&logits, &[]), sk.sample(&logits, &[]));
    }
}

#[test]
fn tiny_temperature_approaches_greedy() {
    let logits = [0.0f32, 1.0, 0.5, 0.9];
    for t in [1e-3f32, 1e-30, f32::MIN_POSITIVE] {
        let mut p = params();
        p.temperature = t;
        p.seed = Some(5);
        let mut s = Sampler::new(&p, 0);
        let c = counts(&mut s, &logits, 1000);
        assert_eq!(c[1], 1000, "temperature {t}: {c:?}");
    }
}

// ---------------------------------------------------------------- seeds

#[test]
fn same_seed_same_sequence_different_seed_differs() {
    let flat = vec![0.0f32; 1000];
    let run = |seed: Option<u64>, fallback: u64| {
        let mut p = params();
        p.seed = seed;
        let mut s = Sampler::new(&p, fallback);
        (0..50)
            .map(|_| s.sample(&flat, &[]).token)
            .collect::<Vec<_>>()
    };
    let a = run(Some(42), 0);
    assert_eq!(a, run(Some(42), 12345), "explicit seed wins over fallback");
    assert_eq!(a, run(None, 42), "fallback seeds when seed is None");
    assert_ne!(a, run(Some(43), 0));
    assert_ne!(run(None, 1), run(None, 2));
    // Interleaving another request's sampler does not change this one's draws.
    let mut p = params();
    p.seed = Some(42);
    let mut s1 = Sampler::new(&p, 0);
    let mut other = Sampler::new(&p, 0);
    let mut inter = Vec::new();
    for _ in 0..50 {
        other.sample(&random_logits(100, 9), &[]);
        inter.push(s1.sample(&flat, &[]).token);
    }
    assert_eq!(a, inter);
}

#[test]
fn one_draw_per_step_whatever_the_row() {
    // Step i's draw is the i-th number of the stream, whether earlier rows were degenerate,
    // peaked, top-k-filtered or full-vocabulary.
    let flat = vec![0.0f32; 500];
    let firsts: [Vec<f32>; 4] = [
        vec![f32::NEG_INFINITY; 500],
        vec![f32::NAN; 500],
        random_logits(500, 4),
        flat.clone(),
    ];
    let mut outs = Vec::new();
    for first in &firsts {
        let p = SamplingParams {
            seed: Some(77),
            top_k: 100,
            ..params()
        };
        let mut s = Sampler::new(&p, 0);
        s.sample(first, &[]);
        outs.push(
            (0..10)
                .map(|_| s.sample(&flat, &[]).token)
                .collect::<Vec<_>>(),
        );
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]), "{outs:?}");
}

// ---------------------------------------------------------------- top-k / top-p / min-p

#[test]
fn top_k_restricts_support() {
    let logits = random_logits(1000, 11);
    let top: Vec<u32> = ranked(&logits)[..5].to_vec();
    let mut p = params();
    p.top_k = 5;
    p.temperature = 3.0; // flatten so that every kept token is likely to appear
    p.seed = Some(1);
    let mut s = Sampler::new(&p, 0);
    let c = counts(&mut s, &logits, 2000);
    for (id, &n) in c.iter().enumerate() {
        if top.contains(&(id as u32)) {
            assert!(n > 0, "top-k token {id} never sampled: {c:?}");
        } else {
            assert_eq!(n, 0, "token {id} outside top-5 sampled");
        }
    }
}

#[test]
fn top_k_ties_keep_lowest_ids() {
    let mut p = params();
    p.top_k = 2;
    p.seed = Some(3);
    let mut s = Sampler::new(&p, 0);
    let c = counts(&mut s, &[1.0; 6], 1000);
    assert_eq!(c[2..], [0, 0, 0, 0]);
    assert!(c[0] > 0 && c[1] > 0);
}

#[test]
fn top_p_keeps_smallest_nucleus_with_right_frequencies() {
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut p = params();
    p.top_p = 0.75;
    p.seed = Some(2024);
    let mut s = Sampler::new(&p, 0);
    let n = 20000;
    let c = counts(&mut s, &logits, n);
    assert_eq!(c[2] + c[3], 0, "{c:?}");
    let f0 = c[0] as f64 / n as f64;
    // Renormalised nucleus: 0.5 / 0.8 = 0.625 (σ ≈ 0.0034; bound is ~9σ).
    assert!((f0 - 0.625).abs() < 0.03, "{f0}");

    // top_p = 1 keeps everything, with the right frequencies.
    let full = SamplingParams {
        seed: Some(8),
        ..params()
    };
    let mut s = Sampler::new(&full, 0);
    let c = counts(&mut s, &logits, n);
    for (i, &pi) in probs.iter().enumerate() {
        let f = c[i] as f64 / n as f64;
        assert!((f - pi as f64).abs() < 0.03, "token {i}: {f} vs {pi}");
    }
}

#[test]
fn full_vocab_sampling_frequencies_across_blocks() {
    // Probability mass in four tokens spread over the row; everything else -inf or NaN.
    let mut logits = vec![f32::NEG_INFINITY; 1000];
    logits[1] = f32::NAN;
    let support = [(5usize, 0.1f64), (300, 0.2), (700, 0.3), (999, 0.4)];
    for &(id, p) in &support {
        logits[id] = (p as f32).ln() + 3.0;
    }
    let mut s = Sampler::new(
        &SamplingParams {
            seed: Some(17),
            ..params()
        },
        0,
    );
    let n = 20000;
    let c = counts(&mut s, &logits, n);
    assert_eq!(c.iter().sum::<usize>(), n);
    for &(id, p) in &support {
        let f = c[id] as f64 / n as f64;
        assert!((f - p).abs() < 0.03, "token {id}: {f} vs {p}");
    }
}

#[test]
fn top_p_on_large_vocab_keeps_exact_nucleus() {
    // Geometric distribution over shuffled ids: the 0.5-nucleus is exactly the best 70 tokens.
    let v = 49152usize;
    let mut ids: Vec<usize> = (0..v).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    for i in (1..v).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    let mut logits = vec![0.0f32; v];
    for (rank, &id) in ids.iter().enumerate() {
        logits[id] = -(rank as f32) * 0.01;
    }
    let probs: Vec<f64> = log_softmax(&logits).iter().map(|l| l.exp()).collect();
    let mut cum = 0.0;
    let mut nucleus = 0;
    while cum < 0.5 {
        cum += probs[ids[nucleus]];
        nucleus += 1;
    }
    assert_eq!(nucleus, 70);
    let rank_of: std::collections::HashMap<u32, usize> = ids
        .iter()
        .enumerate()
        .map(|(r, &id)| (id as u32, r))
        .collect();
    let mut p = params();
    p.top_p = 0.5;
    p.seed = Some(31);
    let mut s = Sampler::new(&p, 0);
    let mut max_rank = 0;
    for _ in 0..3000 {
        let r = rank_of[&s.sample(&logits, &[]).token];
        assert!(r < nucleus, "rank {r} outside the nucleus of {nucleus}");
        max_rank = max_rank.max(r);
    }
    assert!(
        max_rank >= 64,
        "ranks 64..70 never sampled (max {max_rank})"
    );

    // Same with top-k in front (k larger than the nucleus).
    p.top_k = 200;
    let mut s = Sampler::new(&p, 0);
    for _ in 0..500 {
        assert!(rank_of[&s.sample(&logits, &[]).token] < nucleus);
    }
}

#[test]
fn min_p_drops_unlikely_tokens() {
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut p = params();
    p.min_p = 0.2; // threshold 0.1
    p.seed = Some(4);
    let mut s = Sampler::new(&p, 0);
    let c = counts(&mut s, &logits, 5000);
    assert_eq!(c[3], 0, "{c:?}");
    assert!(c[2] > 0, "{c:?}");
    // Temperature applies first: at T = 0.5 the probabilities are ∝ p², so 0.15² / 0.5² = 0.09
    // falls below min_p = 0.2 too.
    p.temperature = 0.5;
    let mut s = Sampler::new(&p, 0);
    let c = counts(&mut s, &logits, 5000);
    assert_eq!(c[2] + c[3], 0, "{c:?}");
    assert!(c[1] > 0);
}

// ---------------------------------------------------------------- penalties

#[test]
fn penalties_exact_values() {
    let mut logits = [2.0f32, -1.0, 0.5, 3.0];
    let p = SamplingParams {
        repetition_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..params()
    };
    apply_penalties(&mut logits, &[3, 0, 1, 1, 3, 3, 99], &p);
    // t0: 2/2 - (0.25 + 0.5); t1: -1*2 - (0.5 + 0.5); t2 untouched; t3: 3/2 - (0.75 + 0.5).
    assert_eq!(logits, [0.25, -3.0, 0.5, 0.25]);

    let mut l = [1.0f32, 1.0];
    let neg = SamplingParams {
        presence_penalty: -1.0,
        ..params()
    };
    apply_penalties(&mut l, &[1, 1], &neg);
    assert_eq!(l, [1.0, 2.0]);

    let mut l = [1.0f32, -1.0];
    apply_penalties(&mut l, &[0, 1], &params());
    assert_eq!(l, [1.0, -1.0], "defaults are neutral");
}

#[test]
fn sampler_applies_penalties_and_reports_penalised_logprobs() {
    let p = SamplingParams {
        temperature: 0.0,
        presence_penalty: 0.5,
        logprobs: Some(2),
        ..params()
    };
    let mut s = Sampler::new(&p, 0);
    let logits = [1.0f32, 0.9, -3.0];
    assert_eq!(s.sample(&logits, &[]).token, 0);
    let out = s.sample(&logits, &[0]);
    assert_eq!(out.token, 1);
    let lp = log_softmax(&[0.5, 0.9, -3.0]);
    assert!((out.logprob as f64 - lp[1]).abs() < 1e-5);
    assert_eq!(out.top_logprobs[0].0, 1);
    assert_eq!(out.top_logprobs[1].0, 0);
    assert!((out.top_logprobs[1].1 as f64 - lp[0]).abs() < 1e-5);
}

// ---------------------------------------------------------------- logprobs

#[test]
fn logprobs_top_n_sorted_and_normalised() {
    let logits = random_logits(49152, 21);
    let want = log_softmax(&logits);
    let order = ranked(&logits);
    let p = SamplingParams {
        logprobs: Some(MAX_LOGPROBS),
        seed: Some(1),
        temperature: 0.7,
        ..params()
    };
    let mut s = Sampler::new(&p, 0);
    let out = s.sample(&logits, &[]);
    assert_eq!(out.top_logprobs.len(), MAX_LOGPROBS);
    for (j, &(id, lp)) in out.top_logprobs.iter().enumerate() {
        assert_eq!(id, order[j]);
        assert!((lp as f64 - want[id as usize]).abs() < 1e-4);
    }
    assert!(out.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    // Reported logprob is of the model distribution (before temperature).
    assert!((out.logprob as f64 - want[out.token as usize]).abs() < 1e-4);

    // Small vocabulary: top-20 is the whole vocabulary, so exp sums to 1.
    let small = random_logits(20, 5);
    let out = s.sample(&small, &[]);
    let total: f64 = out
        .top_logprobs
        .iter()
        .map(|&(_, l)| (l as f64).exp())
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    let mut ids: Vec<u32> = out.top_logprobs.iter().map(|e| e.0).collect();
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
}

#[test]
fn logprobs_ties_and_none() {
    let p = SamplingParams {
        logprobs: Some(3),
        temperature: 0.0,
        ..params()
    };
    let out = Sampler::new(&p, 0).sample(&[1.0, 2.0, 2.0, 0.0], &[]);
    let ids: Vec<u32> = out.top_logprobs.iter().map(|e| e.0).collect();
    assert_eq!(ids, [1, 2, 0]);
    let out = Sampler::new(&params(), 0).sample(&[1.0, 2.0], &[]);
    assert!(out.top_logprobs.is_empty());
}

#[test]
fn degenerate_rows_do_not_panic() {
    let mut s = Sampler::new(&params(), 0);
    assert_eq!(s.sample(&[], &[]).token, 0);
    assert_eq!(s.sample(&[f32::NAN; 4], &[]).token, 0);
    assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0], &[7]).token, 1);
    let bad = SamplingParams {
        temperature: f32::NAN,
        top_p: -1.0,
        min_p: 9.0,
        repetition_penalty: -2.0,
        logprobs: Some(500),
        ..params()
    };
    let out = Sampler::new(&bad, 0).sample(&random_logits(100, 1), &[3]);
    assert!(out.top_logprobs.len() <= MAX_LOGPROBS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn sampled_token_is_in_top_k(
        logits in prop::collection::vec(-10.0f32..10.0, 1..300),
        top_k in 0usize..10,
        top_p in 0.05f32..=1.0,
        min_p in 0.0f32..0.5,
        temperature in 0.05f32..3.0,
        seed in any::<u64>(),
    ) {
        let p = SamplingParams { top_k, top_p, min_p, temperature, seed: Some(seed), ..params() };
        let mut s = Sampler::new(&p, 0);
        let order = ranked(&logits);
        let k = if top_k == 0 { logits.len() } else { top_k.min(logits.len()) };
        for _ in 0..5 {
            let t = s.sample(&logits, &[]).token;
            prop_assert!(order[..k].contains(&t));
        }
    }
}

// ---------------------------------------------------------------- stop strings

fn stops(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[test]
fn stop_string_spanning_deltas() {
    let mut m = StopMatcher::new(&stops(&["STOP"]));
    let r = m.push("abc ST");
    assert_eq!((r.emit.as_str(), r.stopped), ("abc ", false));
    let r = m.push("O");
    assert_eq!((r.emit.as_str(), r.stopped), ("", false));
    let r = m.push("P more");
    assert_eq!((r.emit.as_str(), r.stopped), ("", true));
    assert!(m.stopped());
    assert_eq!(m.push("x").emit, "");
    assert!(m.push("x").stopped);
    assert_eq!(m.finish(), "");
}

#[test]
fn multiple_stop_strings_earliest_wins() {
    let mut m = StopMatcher::new(&stops(&["\n\n", "END"]));
    let r = m.push("hello END world\n\n");
    assert_eq!((r.emit.as_str(), r.stopped), ("hello ", true));
    let mut m = StopMatcher::new(&stops(&["END", "\n\n"]));
    assert_eq!(m.push("a\n").emit, "a");
    assert_eq!(m.push("E").emit, "\n");
    let r = m.push("ND");
    assert_eq!((r.emit.as_str(), r.stopped), ("", true));
}

#[test]
fn partial_prefix_released_when_it_diverges() {
    let mut m = StopMatcher::new(&stops(&["STOP"]));
    assert_eq!(m.push("ST").emit, "");
    assert_eq!(m.push("AY").emit, "STAY");
    assert_eq!(m.push("S").emit, "");
    assert_eq!(m.finish(), "S");
    // Overlapping self-prefix: "aab" inside "aaab".
    let mut m = StopMatcher::new(&stops(&["aab"]));
    let mut out = String::new();
    for d in ["a", "a", "a", "b", "zz"] {
        let r = m.push(d);
        out.push_str(&r.emit);
        if r.stopped {
            break;
        }
    }
    assert_eq!(out, "a");
}

#[test]
fn unicode_around_stop() {
    let mut m = StopMatcher::new(&stops(&["终止", "🛑"]));
    assert_eq!(m.push("你好终").emit, "你好");
    assert_eq!(m.push("点é").emit, "终点é");
    let r = m.push("ü🛑ñ");
    assert_eq!((r.emit.as_str(), r.stopped), ("ü", true));
    let mut m = StopMatcher::new(&stops(&["ab"]));
    assert_eq!(m.push("éa").emit, "é");
    assert_eq!(m.finish(), "a");
}

#[test]
fn stop_at_very_start_and_no_stops() {
    let mut m = StopMatcher::new(&stops(&["<|end|>"]));
    let r = m.push("<|end|>tail");
    assert_eq!((r.emit.as_str(), r.stopped), ("", true));
    let mut m = StopMatcher::new(&stops(&["<|end|>"]));
    assert_eq!(m.push("<|").emit, "");
    assert!(m.push("end|>").stopped);
    let mut m = StopMatcher::new(&[]);
    assert_eq!(m.push("anything").emit, "anything");
    assert_eq!(m.finish(), "");
}

/// Reference: the whole text cut before the earliest occurrence of any stop string.
fn reference_cut(text: &str, stops: &[String]) -> (String, bool) {
    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn stop_matcher_matches_reference(
        deltas in prop::collection::vec("[abé🛑]{0,4}", 0..12),
        stop_list in prop::collection::vec("[abé🛑]{1,3}", 0..3),
    ) {
        let mut m = StopMatcher::new(&stop_list);
        let mut out = String::new();
        let mut stopped = false;
        let mut fed = String::new();
        for d in &deltas {
            fed.push_str(d);
            let r = m.push(d);
            out.push_str(&r.emit);
            // Never emits anything that could still turn out to be part of a stop string.
            let (cut, _) = reference_cut(&fed, &stop_list);
            prop_assert!(cut.starts_with(&out));
            // Releases everything that cannot start a stop string: what is held back is a
            // proper prefix of one of them.
            if !r.stopped {
                let held = &fed[out.len()..];
                prop_assert!(held.is_empty() || stop_list.iter().any(|s| s.starts_with(held)));
            }
            if r.stopped {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push_str(&m.finish());
        }
        let (want, want_stopped) = reference_cut(&fed, &stop_list);
        prop_assert_eq!(out, want);
        prop_assert_eq!(stopped, want_stopped);
    }
}

/// Timing report for a 49,152-token vocabulary (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore = "timing report, not a check"]
fn sampler_speed_report() {
    let logits = random_logits(49152, 123);
    let generated: Vec<u32> = (0..512).map(|i| (i * 97) % 49152).collect();
    let configs: Vec<(&str, SamplingParams)> = vec![
        (
            "greedy",
            SamplingParams {
                temperature: 0.0,
                ..params()
            },
        ),
        ("temp 1 full vocab", params()),
        (
            "top_k 40",
            SamplingParams {
                top_k: 40,
                ..params()
            },
        ),
        (
            "top_p 0.9",
            SamplingParams {
                top_p: 0.9,
                ..params()
            },
        ),
        (
            "top_k 50 top_p 0.95",
            SamplingParams {
                top_k: 50,
                top_p: 0.95,
                ..params()
            },
        ),
        (
            "min_p 0.05",
            SamplingParams {
                min_p: 0.05,
                ..params()
            },
        ),
        (
            "penalties+logprobs 5+top_k 40",
            SamplingParams {
                top_k: 40,
                repetition_penalty: 1.1,
                frequency_penalty: 0.5,
                logprobs: Some(5),
                ..params()
            },
        ),
    ];
    for (name, p) in configs {
        let mut s = Sampler::new(&p, 0);
        let n = 20;
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(s.sample(&logits, &generated));
            }
            best = best.min(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        println!("{name:32} {best:8.1} us/step (best of 10 x {n})");
    }
}
