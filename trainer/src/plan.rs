//! The memory planner: what a training run holds at its peak, item by item,
//! computed from the model's shape and the run's configuration before any
//! weight is loaded, so that a run that cannot fit is refused at once with
//! the item to blame and the setting that shrinks it (`fathom train
//! --plan`).
//!
//! The figures are upper bounds of what fathom itself allocates (the
//! allocator's slack and the CUDA context come on top):
//!
//! - **resident** for the whole run: the weights, the optimizer's f32
//!   master weights (for bf16 models), the reference model (when the KL
//!   term is on) and AdamW's two f32 moments;
//! - **the update** (one micro-batch at a time): the micro-batch's
//!   gradients plus the accumulated ones, the optimizer's f32 copy of the
//!   gradients below f32, and the activations the backward pass keeps;
//! - **the rollouts**: a key/value cache for each episode in flight, and
//!   either the batch decoder's f32 copy of the weights (fused kernels) or
//!   the attention scores of the prompts read at once (one per worker
//!   thread, in chunks of 1,024 tokens on a GPU).
//!
//! The peak is resident + the larger of the update and the rollouts (they
//! never overlap). A sequence is the longest an episode can be: the prompt,
//! `max_turns` turns of `max_turn_tokens`, and a tool response of
//! `max_tool_chars` after every turn but the last, at three characters a
//! token (English BPE averages about four, so this errs high).

use std::fmt;

use candle_core::DType;
use fathom_model::Kernels;
use fathom_model::config::Qwen2Config;

use crate::config::TrainConfig;

/// Characters per token assumed for prompts and tool responses.
pub const CHARS_PER_TOKEN: usize = 3;

/// Tokens of a question, beyond the system prompt.
const QUESTION_TOKENS: usize = 128;

/// The shapes of published Qwen2.5 models, for planning runs whose
/// weights are not on this machine yet: (name, config).
pub fn known_shapes() -> Vec<(&'static str, Qwen2Config)> {
    let shape = |vocab, hidden, intermediate, layers, heads, kv, tied| Qwen2Config {
        architectures: vec!["Qwen2ForCausalLM".into()],
        model_type: "qwen2".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv),
        max_position_embeddings: 32768,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: tied,
        hidden_act: "silu".into(),
        bos_token_id: None,
        eos_token_id: None,
        torch_dtype: Some("bfloat16".into()),
    };
    vec![
        ("qwen2.5-0.5b", shape(151_936, 896, 4864, 24, 14, 2, true)),
        ("qwen2.5-1.5b", shape(151_936, 1536, 8960, 28, 12, 2, true)),
        ("qwen2.5-3b", shape(151_936, 2048, 11008, 36, 16, 2, true)),
        ("qwen2.5-7b", shape(152_064, 3584, 18944, 28, 28, 4, false)),
    ]
}

/// The published shape a model path names (`models/Qwen2.5-7B-Instruct`
/// → Qwen2.5-7B), if any.
pub fn shape_named(path: &str) -> Option<Qwen2Config> {
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .to_ascii_lowercase();
    known_shapes()
        .into_iter()
        .find(|(k, _)| name == *k || name.starts_with(&format!("{k}-")))
        .map(|(_, c)| c)
}

/// The shape of `config`'s model: an `init-tiny` model's from
/// `[model.tiny]`, a model directory's from its `config.json`, or a
/// published shape its path names (for planning before a download).
pub fn shape_of(config: &TrainConfig) -> Result<Qwen2Config, String> {
    let m = &config.model;
    if m.path == "init-tiny" {
        let t = &m.tiny;
        return Ok(Qwen2Config {
            vocab_size: t.vocab,
            hidden_size: t.hidden,
            intermediate_size: t.intermediate,
            num_hidden_layers: t.layers,
            num_attention_heads: t.heads,
            num_key_value_heads: Some(t.kv_heads),
            tie_word_embeddings: true,
            ..known_shapes().remove(0).1
        });
    }
    let dir = std::path::Path::new(&m.path);
    if dir.join("config.json").exists() {
        return Qwen2Config::load(dir).map_err(|e| e.to_string());
    }
    shape_named(&m.path).ok_or_else(|| {
        let names: Vec<&str> = known_shapes().iter().map(|(n, _)| *n).collect();
        format!(
            "model.path {} has no config.json and names no known shape ({}): download the model first",
            m.path,
            names.join(", ")
        )
    })
}

/// The kernels a new run of `config` would use (as
/// [`Kernels::best_for`], without opening the device).
pub fn kernels_of(config: &TrainConfig) -> Kernels {
    let dtype = fathom_model::dir::parse_dtype(&config.model.dtype).unwrap_or(DType::F32);
    Kernels::best_on(config.model.device == "cpu", dtype)
}

/// What one item of the plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The model's weights.
    Weights,
    /// f32 master weights (models below f32).
    MasterWeights,
    /// The frozen reference model (KL on).
    Reference,
    /// AdamW's first and second moments (f32).
    Moments,
    /// One micro-batch's gradients and the accumulated ones.
    Gradients,
    /// The optimizer's f32 copy of the gradients (models below f32).
    GradientCopy,
    /// What the backward pass keeps of one micro-batch's forward pass.
    Activations,
    /// Key/value caches of the episodes decoded at once.
    RolloutCache,
    /// The batch decoder's f32 copy of the weights.
    DecoderWeights,
    /// Attention scores of the prompts read at once during rollouts.
    PrefillScores,
}

impl Item {
    /// Its name in the printed plan.
    pub fn name(self) -> &'static str {
        match self {
            Item::Weights => "weights",
            Item::MasterWeights => "master weights (f32)",
            Item::Reference => "reference model",
            Item::Moments => "optimizer moments (f32)",
            Item::Gradients => "gradients (micro-batch + accumulated)",
            Item::GradientCopy => "gradients' f32 copy at the step",
            Item::Activations => "activations kept for backward",
            Item::RolloutCache => "rollout key/value caches",
            Item::DecoderWeights => "batch decoder's f32 weights",
            Item::PrefillScores => "prompt attention scores",
        }
    }

    /// The setting that shrinks it.
    pub fn remedy(self) -> &'static str {
        match self {
            Item::Weights | Item::MasterWeights | Item::Moments | Item::Gradients | Item::GradientCopy => {
                "a smaller model (model.path) or a device with more memory"
            }
            Item::Reference => "grpo.kl_coef = 0 (no reference model)",
            Item::Activations => {
                "model.checkpointing = true, a smaller grpo.micro_batch, or shorter episodes (rollout.max_turns, rollout.max_turn_tokens, rollout.max_tool_chars)"
            }
            Item::RolloutCache | Item::PrefillScores => {
                "a smaller rollout.concurrency, or shorter episodes (rollout.max_turns, rollout.max_turn_tokens, rollout.max_tool_chars)"
            }
            Item::DecoderWeights => "a smaller model (model.path)",
        }
    }
}

/// The plan of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Parameters of the model.
    pub parameters: u64,
    /// The longest sequence, in tokens.
    pub sequence: usize,
    /// Generated tokens of that sequence (where logits are taken).
    pub generated: usize,
    /// Sequences per forward pass of the update.
    pub micro_batch: usize,
    /// Episodes decoded at once.
    pub concurrency: usize,
    /// The weights' dtype.
    pub dtype: DType,
    /// The kernels the run would use.
    pub kernels: Kernels,
    /// Held for the whole run.
    pub resident: Vec<(Item, u64)>,
    /// Held during an update.
    pub update: Vec<(Item, u64)>,
    /// Held during the rollouts.
    pub rollout: Vec<(Item, u64)>,
}

fn sum(items: &[(Item, u64)]) -> u64 {
    items.iter().map(|(_, b)| b).sum()
}

impl MemoryPlan {
    /// The plan of `config` on a model of `shape` run with `kernels`.
    pub fn new(config: &TrainConfig, shape: &Qwen2Config, kernels: Kernels) -> MemoryPlan {
        let dtype = fathom_model::dir::parse_dtype(&config.model.dtype).unwrap_or(DType::F32);
        let b = dtype.size_in_bytes() as u64;
        let p = parameters(shape);
        let r = &config.rollout;
        let prompt_chars = fathom_core::protocol::system_text(r.prompt, "2026-01-01").len();
        let turns = r.max_turns as usize;
        let generated = turns * r.max_turn_tokens as usize;
        let tool = turns.saturating_sub(1) * r.max_tool_chars.div_ceil(CHARS_PER_TOKEN);
        let sequence = prompt_chars.div_ceil(CHARS_PER_TOKEN) + QUESTION_TOKENS + generated + tool;
        let micro_batch = config.grpo.micro_batch.max(1);
        let concurrency = r.concurrency.max(1);

        let mut resident = vec![(Item::Weights, p * b)];
        if dtype != DType::F32 {
            resident.push((Item::MasterWeights, p * 4));
        }
        if config.grpo.kl_coef > 0.0 {
            resident.push((Item::Reference, p * b));
        }
        resident.push((Item::Moments, 2 * p * 4));

        let mut update = vec![(Item::Gradients, 2 * p * b)];
        if dtype != DType::F32 {
            update.push((Item::GradientCopy, p * 4));
        }
        update.push((
            Item::Activations,
            activations(
                shape,
                kernels,
                b,
                sequence as u64,
                generated as u64,
                config.model.checkpointing,
            ) * micro_batch as u64,
        ));

        let t = sequence as u64;
        let rollout = match kernels {
            // The batch decoder: an f32 copy of the weights and f32 caches.
            Kernels::Fused => {
                let kv = (shape.num_hidden_layers * 2 * kv_width(shape)) as u64 * 4;
                vec![
                    (Item::DecoderWeights, p * 4),
                    (Item::RolloutCache, kv * t * concurrency as u64),
                ]
            }
            // One turn at a time per worker thread, each reading its
            // context with the written-out attention: one layer's scores
            // for a prefill chunk (the whole context on the CPU) at once.
            Kernels::Reference => {
                let kv = (shape.num_hidden_layers * 2 * kv_width(shape)) as u64 * b;
                let chunk = if config.model.device == "cpu" {
                    t
                } else {
                    (fathom_model::generate::PREFILL_CHUNK as u64).min(t)
                };
                let at_once = concurrency.min(worker_threads()) as u64;
                let heads = shape.num_attention_heads as u64;
                vec![
                    (Item::RolloutCache, kv * t * concurrency as u64),
                    (Item::PrefillScores, at_once * heads * chunk * t * (3 * 4 + b)),
                ]
            }
        };
        MemoryPlan {
            parameters: p,
            sequence,
            generated,
            micro_batch,
            concurrency,
            dtype,
            kernels,
            resident,
            update,
            rollout,
        }
    }

    /// The most the run holds at once.
    pub fn peak(&self) -> u64 {
        sum(&self.resident) + sum(&self.update).max(sum(&self.rollout))
    }

    /// The items held at the peak, largest first.
    pub fn at_peak(&self) -> Vec<(Item, u64)> {
        let phase = if sum(&self.update) >= sum(&self.rollout) {
            &self.update
        } else {
            &self.rollout
        };
        let mut items: Vec<(Item, u64)> = self.resident.iter().chain(phase).copied().collect();
        items.sort_by_key(|b| std::cmp::Reverse(b.1));
        items
    }

    /// `Err` with what to change when the peak exceeds `budget` bytes.
    pub fn check(&self, budget: u64, device: &str) -> Result<(), String> {
        let peak = self.peak();
        if peak <= budget {
            return Ok(());
        }
        let (item, bytes) = self.at_peak()[0];
        Err(format!(
            "this run needs about {} at its peak but {device} has {}: the largest item is {} ({}); change {}. `fathom train --config F --plan` prints every item",
            human(peak),
            human(budget),
            item.name(),
            human(bytes),
            item.remedy()
        ))
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parameters = if self.parameters >= 1_000_000_000 {
            format!("{:.2}B", self.parameters as f64 / 1e9)
        } else {
            format!("{:.2}M", self.parameters as f64 / 1e6)
        };
        writeln!(
            f,
            "{parameters} parameters in {:?} ({:?} kernels); sequences up to {} tokens ({} generated), micro-batch {}, {} episodes decoded at once",
            self.dtype, self.kernels, self.sequence, self.generated, self.micro_batch, self.concurrency
        )?;
        for (title, items) in [
            ("held throughout", &self.resident),
            ("during an update", &self.update),
            ("during rollouts", &self.rollout),
        ] {
            writeln!(f, "  {title}:")?;
            for (item, bytes) in items.iter() {
                writeln!(f, "    {:<40} {:>10}", item.name(), human(*bytes))?;
            }
        }
        write!(f, "  peak: {}", human(self.peak()))
    }
}

/// Parameters of a Qwen2 model of `shape`.
pub fn parameters(shape: &Qwen2Config) -> u64 {
    let h = shape.hidden_size as u64;
    let kv = kv_width(shape) as u64;
    let i = shape.intermediate_size as u64;
    let v = shape.vocab_size as u64;
    let attention = (h * h + h) + 2 * (h * kv + kv) + h * h;
    let layer = attention + 3 * h * i + 2 * h;
    let head = if shape.tie_word_embeddings { 0 } else { v * h };
    v * h + shape.num_hidden_layers as u64 * layer + h + head
}

fn kv_width(shape: &Qwen2Config) -> usize {
    let heads = shape.num_attention_heads.max(1);
    shape.num_key_value_heads.unwrap_or(heads) * (shape.hidden_size / heads)
}

/// Bytes one sequence of `t` tokens (`generated` of them with logits)
/// keeps for the backward pass, with weights of `b` bytes. Every
/// intermediate of the forward pass stays alive until backward (candle's
/// graph holds them), so this counts them: per layer and token, the norms'
/// inputs and outputs, q/k/v before and after rotary, the attention output
/// and projection, the residual sums, and the MLP's gate, up, activation
/// and product; the reference kernels also keep K/V repeated to every head
/// and the f32 scores, masked scores and probabilities (`[heads, t, t]`),
/// which the fused kernels never hold. Logits are kept in f32 with their
/// log-softmax and the entropy's probabilities. With `checkpointing` only
/// each block's input is kept, plus one block's intermediates while it is
/// run again.
fn activations(shape: &Qwen2Config, kernels: Kernels, b: u64, t: u64, generated: u64, checkpointing: bool) -> u64 {
    let h = shape.hidden_size as u64;
    let kv = kv_width(shape) as u64;
    let i = shape.intermediate_size as u64;
    let heads = shape.num_attention_heads as u64;
    let per_token = match kernels {
        Kernels::Reference => (14 * h + 4 * kv + 5 * i) * b,
        Kernels::Fused => (10 * h + 2 * kv + 5 * i) * b + heads * 4,
    };
    let scores = match kernels {
        Kernels::Reference => heads * t * t * (3 * 4 + b),
        Kernels::Fused => 0,
    };
    let layers = shape.num_hidden_layers as u64;
    // The f32 logits, their log-softmax, the softmax and product of the
    // entropy, the gathered terms and their gradients: about 7 copies.
    let logits = 7 * generated * shape.vocab_size as u64 * 4;
    if checkpointing {
        layers * h * t * b + per_token * t + scores + logits
    } else {
        layers * (per_token * t + scores) + logits
    }
}

/// Threads that run episodes at once when each turn holds one (the async
/// runtime's workers: one per CPU).
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `bytes` as a human reads them (GiB, MiB, KiB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// Parses a memory size: `141GB`, `80GiB`, `512MB`, `24G`, or bytes.
/// Decimal units (GB, MB) are powers of 1000, binary ones (GiB, G) of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("memory size '{text}' does not start with a number (say 141GB or 80GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "memory size '{text}': unknown unit '{other}' (use GB, GiB, MB or MiB)"
            ));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(format!("memory size '{text}' is out of range"));
    }
    Ok(bytes as u64)
}

/// This machine's memory (`MemTotal` of /proc/meminfo), when readable.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_models() {
        // Hugging Face's counts: 0.49B, 1.54B, 3.09B, 7.62B.
        let want = [
            ("qwen2.5-0.5b", 494_032_768u64),
            ("qwen2.5-1.5b", 1_543_714_304),
            ("qwen2.5-3b", 3_085_938_688),
            ("qwen2.5-7b", 7_615_616_512),
        ];
        for ((name, shape), (wname, count)) in known_shapes().iter().zip(want) {
            assert_eq!(*name, wname);
            assert_eq!(parameters(shape), count, "{name}");
        }
    }

    #[test]
    fn model_paths_name_their_shapes() {
        assert_eq!(
            shape_named("models/Qwen2.5-7B-Instruct").map(|c| c.hidden_size),
            Some(3584)
        );
        assert_eq!(shape_named("Qwen2.5-0.5B/").map(|c| c.hidden_size), Some(896));
        assert!(shape_named("models/qwen2.5-7bx").is_none());
        assert!(shape_named("llama").is_none());
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("141GB").unwrap(), 141_000_000_000);
        assert_eq!(parse_size("80GiB").unwrap(), 80 << 30);
        assert_eq!(parse_size("24G").unwrap(), 24 << 30);
        assert_eq!(parse_size("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").unwrap_err().contains("number"));
        assert!(parse_size("3 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("0").is_err());
    }

    fn example(name: &str) -> TrainConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        TrainConfig::load(&path).unwrap()
    }

    #[test]
    fn the_gpu_examples_fit_one_141_gb_gpu_and_7b_is_refused() {
        let budget = parse_size("141GB").unwrap();
        for name in ["qwen2.5-0.5b-gpu.toml", "qwen2.5-1.5b-gpu.toml", "qwen2.5-3b-gpu.toml"] {
            let config = example(name);
            let plan = MemoryPlan::new(&config, &shape_of(&config).unwrap(), kernels_of(&config));
            assert_eq!(plan.dtype, DType::BF16);
            assert!(plan.resident.iter().any(|(i, _)| *i == Item::MasterWeights));
            plan.check(budget, "cuda:0").unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let paper = example("qwen2.5-7b-gpu.toml");
        let plan = MemoryPlan::new(&paper, &shape_of(&paper).unwrap(), kernels_of(&paper));
        let err = plan.check(budget, "cuda:0").unwrap_err();
        assert!(err.contains("activations kept for backward"), "{err}");
        assert!(err.contains("grpo.micro_batch"), "{err}");
        // Even without activations the 7B state exceeds one GPU: weights,
        // f32 masters, reference, moments and gradients.
        let state: u64 = plan.resident.iter().map(|(_, b)| b).sum::<u64>()
            + plan
                .update
                .iter()
                .filter(|(i, _)| *i != Item::Activations)
                .map(|(_, b)| b)
                .sum::<u64>();
        assert!(state > budget, "{}", human(state));
    }

    #[test]
    fn the_plan_counts_what_the_configuration_turns_on() {
        let mut config = example("tiny-cpu.toml");
        let shape = shape_of(&config).unwrap();
        let f32_plan = MemoryPlan::new(&config, &shape, kernels_of(&config));
        assert_eq!(f32_plan.kernels, Kernels::Fused);
        assert!(f32_plan.check(4 << 30, "cpu").is_ok());
        assert!(
            !f32_plan
                .resident
                .iter()
                .any(|(i, _)| matches!(i, Item::MasterWeights | Item::Reference))
        );
        // Weights in f32 at 4 bytes, moments twice that.
        let weights = f32_plan.resident[0].1;
        assert_eq!(weights, f32_plan.parameters * 4);
        assert_eq!(f32_plan.resident.last().unwrap(), &(Item::Moments, 2 * weights));

        config.grpo.kl_coef = 0.001;
        config.model.dtype = "bf16".into();
        let bf16 = MemoryPlan::new(&config, &shape, kernels_of(&config));
        assert_eq!(bf16.kernels, Kernels::Reference);
        let items: Vec<Item> = bf16.resident.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            items,
            [Item::Weights, Item::MasterWeights, Item::Reference, Item::Moments]
        );
        assert_eq!(bf16.resident[0].1 * 2, weights);

        // Activations grow with the micro-batch; too small a budget is
        // refused with the largest item and its setting.
        config.grpo.micro_batch *= 4;
        let bigger = MemoryPlan::new(&config, &shape, kernels_of(&config));
        let act = |p: &MemoryPlan| p.update.iter().find(|(i, _)| *i == Item::Activations).unwrap().1;
        assert_eq!(act(&bigger), 4 * act(&bf16));
        config.model.checkpointing = true;
        let checkpointed = MemoryPlan::new(&config, &shape, kernels_of(&config));
        // Two blocks: one block's intermediates instead of both, plus the
        // blocks' inputs.
        assert!(
            act(&checkpointed) < act(&bigger) * 2 / 3,
            "checkpointing keeps about half with two blocks: {} vs {}",
            act(&checkpointed),
            act(&bigger)
        );
        // Twenty-four blocks: a tenth at most (the logits stay).
        let mut half_b = example("qwen2.5-0.5b-gpu.toml");
        let shape_05 = shape_of(&half_b).unwrap();
        assert!(half_b.model.checkpointing, "the GPU examples checkpoint");
        let with = MemoryPlan::new(&half_b, &shape_05, kernels_of(&half_b));
        half_b.model.checkpointing = false;
        let without = MemoryPlan::new(&half_b, &shape_05, kernels_of(&half_b));
        assert!(act(&with) * 10 < act(&without), "{} vs {}", act(&with), act(&without));
        config.model.checkpointing = false;
        let err = bigger.check(64 << 20, "cpu").unwrap_err();
        assert!(err.contains("activations") && err.contains("cpu has 64.0 MiB"), "{err}");
    }
}
