//! The candle policy keeps its episode's context as the ids it sampled.

use std::sync::Arc;

use fathom_core::protocol::{Message, PromptStyle, Protocol, opening};
use fathom_model::init::{TinySpec, write_tiny};
use fathom_model::sample::Sampling;
use fathom_trainer::candle_policy::{CandleModel, CandlePolicy, continuation};
use fathom_trainer::policy::{Policy, PolicyInput};
use fathom_trainer::recorded::{RecordedEpisode, RecordedTurn, TurnIds, prompt_ids, sequence};

#[test]
fn the_context_is_the_prompt_then_sampled_ids_and_tool_continuations() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<String> = (0..100)
        .map(|i| format!("The river flows through the capital {i}. <think>search</think> <answer>x</answer>"))
        .collect();
    write_tiny(
        dir.path(),
        &TinySpec {
            vocab: 500,
            ..TinySpec::default()
        },
        corpus.iter(),
    )
    .unwrap();
    let model = Arc::new(CandleModel::load(dir.path(), "cpu", "f32").unwrap());
    let tok = &model.loaded().tokenizer;
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let mut policy = CandlePolicy::new(model.clone(), hot, 0);
    let mut messages = opening(PromptStyle::Paper, "2026-01-01", "Who founded it?");
    let v2 = Protocol::V2;
    fn input(messages: &[Message], turn: u32) -> PolicyInput<'_> {
        PolicyInput {
            question: "Who founded it?",
            messages,
            turn,
            seed: 3,
            max_tokens: 12,
            protocol: Protocol::V2,
        }
    }
    let first = policy.generate(input(&messages, 0)).unwrap();
    // Version 2: the prompt ends with `<think>`, which the turn's text
    // begins with and its sampled ids do not.
    let prompt = tok
        .encode(&fathom_core::protocol::render_prompt(&messages, v2))
        .unwrap();
    assert_eq!(prompt.last(), tok.encode("<think>").unwrap().last());
    let ids1 = first.token_ids.clone().unwrap();
    assert!(first.text.starts_with("<think>"), "{:?}", first.text);
    assert_eq!(&first.text["<think>".len()..], tok.decode(&ids1).unwrap());
    assert_eq!(policy.context(), [prompt.as_slice(), ids1.as_slice()].concat());
    assert_eq!(first.logprobs.as_ref().unwrap().len(), ids1.len());

    messages.push(Message::Assistant(first.text.clone()));
    messages.push(Message::Tool(
        "<tool_response>The museum was founded by Ada.</tool_response>".into(),
    ));
    let second = policy.generate(input(&messages, 1)).unwrap();
    let ended = ids1.last().is_some_and(|id| tok.end_ids().contains(id));
    let cont = continuation(
        tok,
        ended,
        "<tool_response>The museum was founded by Ada.</tool_response>",
        v2,
    )
    .unwrap();
    let ids2 = second.token_ids.clone().unwrap();
    assert_eq!(
        policy.context(),
        [prompt.as_slice(), ids1.as_slice(), cont.as_slice(), ids2.as_slice()].concat(),
        "the sampled ids are kept, never re-tokenised"
    );

    // As a training sequence: only the sampled ids carry loss, with the
    // log-probs they were sampled with.
    let seq = policy.sequence(0.5);
    assert_eq!(seq.ids, policy.context());
    let start2 = prompt.len() + ids1.len() + cont.len();
    for (i, g) in seq.generated.iter().enumerate() {
        let sampled = (prompt.len()..prompt.len() + ids1.len()).contains(&i) || i >= start2;
        assert_eq!(*g, sampled, "position {i}");
    }
    assert_eq!(
        &seq.old_logprobs[prompt.len()..prompt.len() + ids1.len()],
        first.logprobs.as_deref().unwrap()
    );
    assert_eq!(&seq.old_logprobs[start2..], second.logprobs.as_deref().unwrap());
    assert_eq!(seq.loss_tokens(), ids1.len() + ids2.len());

    // The trainer rebuilds the same sequence from what the log records of
    // the episode (the turns' sampled ids and log-probs, and the tool
    // response text), bit for bit.
    let recorded = RecordedEpisode {
        episode_id: fathom_core::EpisodeId(1),
        run: fathom_core::RunId(1),
        policy_version: 0,
        replay_of: None,
        duration_ns: 0,
        step: 1,
        group_id: 0,
        group_index: 0,
        question_id: fathom_core::QuestionId("q".into()),
        seed: 3,
        turns: vec![
            RecordedTurn {
                text: first.text.clone(),
                ids: first.token_ids.clone(),
                logprobs: first.logprobs.clone(),
                tool_text: Some("<tool_response>The museum was founded by Ada.</tool_response>".into()),
            },
            RecordedTurn {
                text: second.text.clone(),
                ids: second.token_ids.clone(),
                logprobs: second.logprobs.clone(),
                tool_text: None,
            },
        ],
        end: None,
    };
    let rollout = fathom_trainer::rollout::RolloutConfig {
        today: "2026-01-01".into(),
        protocol: v2,
        prompt: PromptStyle::Paper,
        ..Default::default()
    };
    let prompt_again = prompt_ids(tok, &rollout, "Who founded it?").unwrap();
    assert_eq!(prompt_again, prompt);
    let rebuilt = sequence(tok, &prompt_again, &recorded, 0.5, TurnIds::Sampled, v2).unwrap();
    assert_eq!(rebuilt, seq);
    // Without sampled ids a GRPO sequence is refused; behaviour cloning
    // tokenises the text instead.
    let mut text_only = recorded.clone();
    text_only.turns[0].ids = None;
    text_only.turns[0].logprobs = None;
    let err = sequence(tok, &prompt, &text_only, 0.5, TurnIds::Sampled, v2).unwrap_err();
    assert!(err.to_string().contains("no sampled token ids"), "{err}");
    let cloned = sequence(tok, &prompt, &text_only, 1.0, TurnIds::TextAllowed, v2).unwrap();
    assert!(cloned.loss_tokens() > ids2.len());
    // A text turn's `<think>` prefix is prompt: it is not tokenised into
    // the turn (the context already ends with it).
    let mut scripted = text_only.clone();
    scripted.turns.truncate(1);
    scripted.turns[0].text = "<think>plan</think><answer>Ada</answer>".into();
    scripted.turns[0].tool_text = None;
    let bc = sequence(tok, &prompt, &scripted, 1.0, TurnIds::TextAllowed, v2).unwrap();
    assert_eq!(
        &bc.ids[prompt.len()..],
        tok.encode("plan</think><answer>Ada</answer>").unwrap().as_slice()
    );

    // A fresh policy on the same conversation starts over from the text.
    let mut other = CandlePolicy::new(model.clone(), hot, 0);
    other.generate(input(&messages, 1)).unwrap();
    let rendered = tok
        .encode(&fathom_core::protocol::render_prompt(&messages, v2))
        .unwrap();
    assert_eq!(&other.context()[..rendered.len()], rendered.as_slice());
}

fn tiny_model() -> (tempfile::TempDir, Arc<CandleModel>) {
    tiny_model_in("f32")
}

pub(crate) fn tiny_model_in(dtype: &str) -> (tempfile::TempDir, Arc<CandleModel>) {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<String> = (0..100)
        .map(|i| format!("The river flows through the capital {i}."))
        .collect();
    write_tiny(
        dir.path(),
        &TinySpec {
            vocab: 400,
            ..TinySpec::default()
        },
        corpus.iter(),
    )
    .unwrap();
    let model = Arc::new(CandleModel::load(dir.path(), "cpu", dtype).unwrap());
    (dir, model)
}

fn gradients(model: &CandleModel, seq: &fathom_trainer::grpo::Sequence) -> Vec<(String, Vec<f32>)> {
    use fathom_trainer::grpo::{GrpoConfig, sequence_loss};
    let m = model.loaded();
    let denominator = seq.loss_tokens() as f64;
    let terms = sequence_loss(&m.model, std::slice::from_ref(seq), &GrpoConfig::default(), denominator).unwrap();
    assert!(terms.tokens > 0);
    let grads = terms.loss.backward().unwrap();
    let vars = m.vars.data().lock().unwrap();
    let mut out: Vec<(String, Vec<f32>)> = vars
        .iter()
        .map(|(name, v)| {
            let g = grads
                .get(v.as_tensor())
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            (name.clone(), g.unwrap_or_default())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn masked_tokens_carry_no_gradient() {
    use fathom_trainer::grpo::Sequence;
    let (_dir, model) = tiny_model();
    // Prompt (masked), a generated turn, then a tool response (masked).
    let ids: Vec<u32> = (0..24).map(|i| 40 + i * 7).collect();
    let generated: Vec<bool> = (0..24).map(|i| (8..16).contains(&i)).collect();
    let old: Vec<f32> = (0..24).map(|i| -2.0 - 0.1 * i as f32).collect();
    let seq = Sequence {
        ids: ids.clone(),
        generated: generated.clone(),
        old_logprobs: old.clone(),
        ref_logprobs: None,
        advantage: 0.7,
    };
    let base = gradients(&model, &seq);
    assert!(base.iter().all(|(_, g)| g.iter().all(|v| v.is_finite())));
    assert!(
        base.iter().any(|(_, g)| g.iter().any(|v| *v != 0.0)),
        "the generated tokens do carry gradient"
    );

    // Other tool-response tokens (after the generated turn) and other
    // "old" log-probs where nothing was generated: the same gradients.
    let mut changed = seq.clone();
    for i in 16..24 {
        changed.ids[i] = 300 - i as u32;
        changed.old_logprobs[i] = -9.0;
    }
    for i in 0..8 {
        changed.old_logprobs[i] = -0.5;
    }
    assert_eq!(gradients(&model, &changed), base, "masked tokens changed the gradients");

    // A generated token's recorded log-prob does matter (the check can fail).
    let mut moved = seq.clone();
    moved.old_logprobs[10] += 1.0;
    assert_ne!(gradients(&model, &moved), base);
}

#[test]
fn grpo_raises_the_reward_of_a_task_with_a_known_optimum() {
    let (before, after) = grpo_on_a_task_with_a_known_optimum("f32", 0.05);
    assert!(before < 0.5, "a random policy should not already solve it: {before}");
    assert!(
        after > before + 0.3,
        "GRPO should raise the mean reward: {before} -> {after}"
    );
}

#[test]
fn bf16_grpo_raises_the_reward_of_a_task_with_a_known_optimum() {
    // Weights, activations and gradients in bf16; the optimizer's f32
    // masters (tested on their own in the optimizer's unit tests).
    let (before, after) = grpo_on_a_task_with_a_known_optimum("bf16", 0.05);
    assert!(before < 0.5, "a random policy should not already solve it: {before}");
    assert!(
        after > before + 0.3,
        "bf16 GRPO should raise the mean reward: {before} -> {after}"
    );
}

/// Eight GRPO steps of 16 one-token samples on a model stored in `dtype`,
/// rewarded when the token is a multiple of 4; the mean reward of 64
/// samples before and after.
fn grpo_on_a_task_with_a_known_optimum(dtype: &str, lr: f64) -> (f64, f64) {
    use fathom_model::generate::{Request, generate};
    use fathom_trainer::grpo::{GrpoConfig, Sequence, advantages, sequence_logprobs, sequence_loss};
    use fathom_trainer::optim::{AdamW, AdamWConfig};

    let (_dir, model) = tiny_model_in(dtype);
    let m = model.loaded();
    let prompt: Vec<u32> = (0..10).map(|i| 20 + i * 3).collect();
    // Reward 1 when the first generated token is a multiple of 4: about a
    // quarter of the vocabulary, so a random policy scores about 0.25 and
    // the optimum is 1.
    let reward = |id: u32| if id.is_multiple_of(4) { 1.0 } else { 0.0 };
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let sample = |seed: u64| {
        let out = generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &prompt,
                max_new_tokens: 1,
                sampling: hot,
                seed,
                stop: &[],
            },
        )
        .unwrap();
        (out.ids[0], out.logprobs[0])
    };
    let mean_reward = |base: u64| (0..64).map(|i| reward(sample(base + i).0)).sum::<f64>() / 64.0;
    let before = mean_reward(1_000_000);
    let vars = m.vars.data().lock().unwrap().clone();
    let mut opt = AdamW::new(
        &vars,
        AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let cfg = GrpoConfig {
        kl_coef: 0.0,
        entropy_coef: 0.0,
        ..GrpoConfig::default()
    };
    for step in 0..8u64 {
        let samples: Vec<(u32, f32)> = (0..16).map(|g| sample(step * 100 + g)).collect();
        let rewards: Vec<f64> = samples.iter().map(|(id, _)| reward(*id)).collect();
        let adv = advantages(&rewards, &[0; 16]);
        let seqs: Vec<Sequence> = samples
            .iter()
            .zip(&adv)
            .map(|((id, lp), a)| {
                let mut ids = prompt.clone();
                ids.push(*id);
                let mut generated = vec![false; prompt.len()];
                generated.push(true);
                let mut old = vec![0.0; prompt.len()];
                old.push(*lp);
                Sequence {
                    ids,
                    generated,
                    old_logprobs: old,
                    ref_logprobs: None,
                    advantage: *a,
                }
            })
            .collect();
        let mut seqs = seqs;
        if dtype != "f32" {
            // Below f32 the old log-probs are the training pass's, as the
            // trainer does: the ratio starts at exactly 1.
            let recomputed = sequence_logprobs(&m.model, &seqs, 1.0).unwrap();
            for (s, lp) in seqs.iter_mut().zip(recomputed) {
                let last = s.ids.len() - 1;
                assert!(
                    (lp[last] - s.old_logprobs[last]).abs() < 0.1,
                    "sampler and trainer agree roughly: {} vs {}",
                    lp[last],
                    s.old_logprobs[last]
                );
                s.old_logprobs = lp;
            }
        }
        let terms = sequence_loss(&m.model, &seqs, &cfg, seqs.len() as f64).unwrap();
        if dtype != "f32" {
            assert_eq!(terms.clip_frac, 0.0, "on-policy: nothing is clipped");
        }
        let grads = terms.loss.backward().unwrap();
        opt.step(&grads, lr, 1.0).unwrap();
    }
    let after = mean_reward(1_000_000);
    eprintln!("{dtype}: mean reward before {before:.3}, after 8 GRPO steps {after:.3}");
    (before, after)
}

#[test]
fn a_checkpoint_is_a_model_directory_and_restores_exactly() {
    use fathom_trainer::checkpoint::{TrainerState, load_state, save};
    use fathom_trainer::optim::{AdamW, AdamWConfig};

    let (dir, model) = tiny_model();
    let m = model.loaded();
    let vars = m.vars.data().lock().unwrap().clone();
    let mut opt = AdamW::new(&vars, AdamWConfig::default()).unwrap();
    let seq = fathom_trainer::grpo::Sequence {
        ids: (0..12).map(|i| 30 + i).collect(),
        generated: (0..12).map(|i| i >= 6).collect(),
        old_logprobs: vec![-3.0; 12],
        ref_logprobs: None,
        advantage: 1.0,
    };
    let cfg = fathom_trainer::grpo::GrpoConfig::default();
    let terms = fathom_trainer::grpo::sequence_loss(&m.model, &[seq], &cfg, 6.0).unwrap();
    opt.step(&terms.loss.backward().unwrap(), 0.01, 1.0).unwrap();
    let state = TrainerState {
        step: 1,
        policy_version: 1,
        data_cursor: 16,
        rng_state: vec![1, 2, 3, 4],
    };
    let ckpt = dir.path().join("checkpoints/step-000001");
    let saved = save(&ckpt, dir.path(), &m.vars, &opt, &state).unwrap();
    assert!(!ckpt.with_extension("tmp").exists());

    // It loads as a model, with the updated weights.
    let back = fathom_model::load(&ckpt, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    let a: Vec<f32> = vars[name].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = back.vars.data().lock().unwrap()[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    let (opt_state, trainer) = load_state(
        &ckpt,
        &saved.weights_digest,
        &saved.optimizer_digest,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(trainer, state);
    let mut restored = AdamW::new(&back.vars.data().lock().unwrap(), AdamWConfig::default()).unwrap();
    restored.load_state(&opt_state).unwrap();
    assert_eq!(restored.steps(), 1);

    // A swapped weights file is caught.
    std::fs::write(ckpt.join("model.safetensors"), b"not the weights").unwrap();
    let err = load_state(
        &ckpt,
        &saved.weights_digest,
        &saved.optimizer_digest,
        &candle_core::Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("model.safetensors has digest"), "{err}");
}

/// The log-probs recorded while sampling (incremental decoding with the KV
/// cache, one episode at a time) equal those the training forward pass
/// computes for the same ids on the same weights (one padded forward pass
/// over a micro-batch of episodes of different lengths), within 1e-4 in
/// f32: so the PPO ratio starts at 1 and the first micro-batch clips
/// nothing.
#[test]
fn sampled_log_probs_equal_the_training_forward_pass() {
    use fathom_trainer::grpo::{GrpoConfig, sequence_logprobs, sequence_loss};

    let (_dir, model) = tiny_model();
    let m = model.loaded();
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let mut seqs = Vec::new();
    for (e, tool) in ["The capital is 7.", "The river flows through the capital 12 and on."]
        .iter()
        .enumerate()
    {
        let mut policy = CandlePolicy::new(model.clone(), hot, 0);
        let mut messages = opening(PromptStyle::Compact, "2026-01-01", "Which capital?");
        for turn in 0..2u32 {
            let g = policy
                .generate(PolicyInput {
                    question: "Which capital?",
                    messages: &messages,
                    turn,
                    seed: 11 + e as u64,
                    max_tokens: 10 + 7 * e as u32,
                    protocol: Protocol::V2,
                })
                .unwrap();
            messages.push(Message::Assistant(g.text));
            messages.push(Message::Tool(format!("<tool_response>{tool}</tool_response>")));
        }
        seqs.push(policy.sequence(if e == 0 { 1.0 } else { -1.0 }));
    }
    assert_ne!(seqs[0].ids.len(), seqs[1].ids.len(), "the batch needs padding");
    let recomputed = sequence_logprobs(&m.model, &seqs, 1.0).unwrap();
    let mut compared = 0;
    for (s, lp) in seqs.iter().zip(&recomputed) {
        for (i, (&new, &old)) in lp.iter().zip(&s.old_logprobs).enumerate().skip(1) {
            if s.generated[i] {
                assert!(
                    (new - old).abs() <= 1e-4,
                    "position {i}: sampled {old} vs training {new}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 20, "{compared} tokens compared");
    let denominator = seqs.iter().map(|s| s.loss_tokens()).sum::<usize>() as f64;
    let terms = sequence_loss(&m.model, &seqs, &GrpoConfig::default(), denominator).unwrap();
    assert_eq!(terms.clip_frac, 0.0, "the ratio starts at 1");
    assert_eq!(terms.tokens, compared);
    // And the padded micro-batch gives each sequence what it gets alone.
    for (s, lp) in seqs.iter().zip(&recomputed) {
        let alone = sequence_logprobs(&m.model, std::slice::from_ref(s), 1.0).unwrap();
        for (a, b) in alone[0].iter().zip(lp) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
