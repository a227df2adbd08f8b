//! The training configuration: one TOML file (`examples/*.toml`), every
//! field documented here, unknown fields refused, values validated with
//! errors that name the field and say what is allowed.

use std::path::{Path, PathBuf};

use fathom_core::protocol::PromptStyle;
use serde::{Deserialize, Serialize};

/// The whole configuration of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name, for people.
    pub name: String,
    /// Root seed: every episode's sampling seed and the data order derive from it.
    #[serde(default)]
    pub seed: u64,
    /// Training steps (one optimizer step per rollout batch); `--steps` overrides.
    pub steps: u64,
    /// The policy model.
    pub model: ModelSection,
    /// The questions.
    pub data: DataSection,
    /// Rollouts.
    #[serde(default)]
    pub rollout: RolloutSection,
    /// The GRPO update.
    #[serde(default)]
    pub grpo: GrpoSection,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Evaluation on held-out questions.
    #[serde(default)]
    pub eval: EvalSection,
    /// Supervised warm start before GRPO.
    #[serde(default)]
    pub sft: Option<SftSection>,
    /// Where snapshots and checkpoints are shipped (`s3://bucket/prefix`,
    /// …), as the global `--snapshots` does; the flag wins when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<String>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model directory, or `init-tiny` to make a tiny random model.
    pub path: String,
    /// `cpu` or `cuda:N` (with the `cuda` feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` or `bf16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// With `path = "init-tiny"`: the tiny model's shape.
    #[serde(default)]
    pub tiny: TinyShape,
    /// Activation checkpointing: training passes keep only each block's
    /// input and run the block again during the backward pass (about a
    /// third more compute for activations a fraction of the size).
    #[serde(default)]
    pub checkpointing: bool,
}

/// `[model.tiny]`: the shape of an `init-tiny` model (its weights are
/// seeded by the run's `seed`, its tokenizer trained on the sandbox world).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyShape {
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary of the trained tokenizer.
    pub vocab: usize,
}

impl Default for TinyShape {
    fn default() -> Self {
        let d = fathom_model::init::TinySpec::default();
        TinyShape {
            layers: d.layers,
            hidden: d.hidden,
            heads: d.heads,
            kv_heads: d.kv_heads,
            intermediate: d.intermediate,
            vocab: d.vocab,
        }
    }
}

impl TinyShape {
    /// The spec of a tiny model of this shape with weights from `seed`.
    pub fn spec(&self, seed: u64) -> fathom_model::init::TinySpec {
        fathom_model::init::TinySpec {
            layers: self.layers,
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.kv_heads,
            intermediate: self.intermediate,
            vocab: self.vocab,
            seed,
            ..Default::default()
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training questions: a verl Parquet file, or `sandbox` to generate them.
    pub train: String,
    /// Questions per step.
    pub questions_per_step: u32,
    /// Rollouts per question (the GRPO group).
    pub group_size: u32,
    /// With `train = "sandbox"`: how many questions to generate.
    #[serde(default = "default_sandbox_questions")]
    pub sandbox_questions: usize,
    /// With sandbox questions: the fewest and most hops.
    #[serde(default = "default_hops")]
    pub hops: [u32; 2],
    /// The size of the sandbox world a command starts in-process for this
    /// run (`--sandbox-entities` wins; default 2000). Larger worlds hold
    /// more distinct questions: 2000 entities hold 1,200 one-hop ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_entities: Option<usize>,
}

fn default_sandbox_questions() -> usize {
    1000
}

fn default_hops() -> [u32; 2] {
    [1, 4]
}

/// `[rollout]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Turns per episode at most.
    pub max_turns: u32,
    /// Generated tokens per turn at most.
    pub max_turn_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Episodes run at once.
    pub concurrency: usize,
    /// Characters of one tool response at most (what the policy reads
    /// after each call; longer responses are cut).
    #[serde(default = "default_tool_chars")]
    pub max_tool_chars: usize,
    /// The system prompt: `paper` (the paper's, with the tool schemas) or
    /// `compact` (a few lines, for tiny models trained from scratch).
    #[serde(default)]
    pub prompt: PromptStyle,
}

fn default_tool_chars() -> usize {
    8_000
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            max_turns: fathom_core::protocol::MAX_TURNS,
            max_turn_tokens: fathom_core::protocol::MAX_TURN_TOKENS,
            temperature: 1.0,
            top_p: 1.0,
            concurrency: 8,
            max_tool_chars: default_tool_chars(),
            prompt: PromptStyle::Paper,
        }
    }
}

/// `[grpo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoSection {
    /// Learning rate.
    pub lr: f64,
    /// `constant`, or `cosine` (to 10% of `lr` at the last step), after warm-up.
    pub schedule: String,
    /// Warm-up steps (linear from 0).
    pub warmup_steps: u64,
    /// PPO clip ε.
    pub clip: f64,
    /// KL coefficient to the frozen reference (0 disables it and the reference).
    pub kl_coef: f64,
    /// Entropy bonus coefficient.
    pub entropy_coef: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Episodes per micro-batch (gradients accumulate over a mini-batch).
    pub micro_batch: usize,
    /// Optimizer steps per rollout batch: the batch is cut into this many
    /// mini-batches of whole groups in order, each one AdamW step (1: one
    /// step on the whole batch).
    #[serde(default = "one_usize")]
    pub mini_batches: usize,
}

fn one_usize() -> usize {
    1
}

impl Default for GrpoSection {
    fn default() -> Self {
        GrpoSection {
            lr: 1e-6,
            schedule: "constant".into(),
            warmup_steps: 0,
            clip: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.001,
            max_grad_norm: 1.0,
            weight_decay: 0.01,
            micro_batch: 4,
            mini_batches: 1,
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Steps between checkpoints.
    pub every: u64,
    /// Checkpoints kept, newest first (the best one is kept as well).
    pub keep_last: usize,
    /// Metric of the best checkpoint to keep: `reward` or `eval_f1`; empty keeps none.
    pub keep_best: String,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 10,
            keep_last: 3,
            keep_best: "eval_f1".into(),
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out questions: a verl Parquet file, or `sandbox`.
    pub questions: String,
    /// Questions evaluated (0: all).
    pub limit: usize,
    /// Steps between evaluations (0: only before and after).
    pub every: u64,
    /// Sampling temperature of evaluation episodes (0: greedy).
    #[serde(default)]
    pub temperature: f64,
    /// Episodes per question at that temperature (the paper validates
    /// with 4 samples at temperature 1).
    #[serde(default = "one")]
    pub samples: u32,
    /// With a temperature above 0: also evaluate greedily (one episode per
    /// question, recorded as benchmark `held-out greedy`).
    #[serde(default)]
    pub greedy: bool,
}

fn one() -> u32 {
    1
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            questions: "sandbox".into(),
            limit: 50,
            every: 0,
            temperature: 0.0,
            samples: 1,
            greedy: false,
        }
    }
}

/// `[sft]`: behaviour cloning on recorded trajectories before GRPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftSection {
    /// Episodes to record with the scripted policy first (0: use what the log holds).
    pub scripted_episodes: usize,
    /// Keep trajectories whose reward is at least this.
    pub min_reward: f64,
    /// Passes over them.
    pub epochs: u32,
    /// Learning rate.
    pub lr: f64,
    /// Trajectories per optimizer step.
    #[serde(default = "default_sft_batch")]
    pub batch: usize,
    /// Optimizer steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    /// After warm-up: `constant`, or `cosine` (to 10% of `lr` at the last step).
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Share (0 to 1) of the recorded episodes in which the scripted
    /// researcher answers at once from the question alone instead of
    /// researching; these are kept whatever they score, so the warm start
    /// imitates a policy that does not always search (as a pretrained model
    /// answers from memory) and GRPO has to learn that researching pays.
    #[serde(default)]
    pub guesses: f64,
    /// Whether the scripted researcher answers from the search results'
    /// snippets when they state the fact (browsing only when they do not):
    /// shorter trajectories, which a tiny model learns from sooner.
    #[serde(default)]
    pub snippets: bool,
}

impl SftSection {
    /// The scripted researcher this warm start records.
    pub fn teacher(&self) -> crate::scripted::Teacher {
        crate::scripted::Teacher {
            snippets: self.snippets,
            guesses: self.guesses,
        }
    }
}

fn default_schedule() -> String {
    "constant".into()
}

fn default_sft_batch() -> usize {
    8
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub message: String,
}

/// The most training steps a run may ask for.
pub const MAX_STEPS: u64 = 10_000_000;

/// The most episodes one step may hold (its batch is kept in memory).
pub const MAX_EPISODES_PER_STEP: u64 = 65_536;

impl TrainConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<TrainConfig, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot be read: {e}")))?;
        let config: TrainConfig = toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks every value and bounds every size; the message names the
    /// field and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, got {v}"))
            }
        };
        // Every size is bounded: a mistyped exponent must be refused
        // here, not discovered as an allocation of terabytes.
        let within = |name: &str, v: u64, low: u64, high: u64| {
            if (low..=high).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be {low} to {high}, got {v}"))
            }
        };
        within("steps", self.steps, 1, MAX_STEPS)?;
        within(
            "data.questions_per_step",
            self.data.questions_per_step.into(),
            1,
            16_384,
        )?;
        within("data.group_size", self.data.group_size.into(), 1, 256)?;
        let per_step = u64::from(self.data.questions_per_step) * u64::from(self.data.group_size);
        if per_step > MAX_EPISODES_PER_STEP {
            return Err(format!(
                "data.questions_per_step x data.group_size is {per_step} episodes per step, more than {MAX_EPISODES_PER_STEP} (the paper's is 256 x 16 = 4096)"
            ));
        }
        within(
            "data.sandbox_questions",
            self.data.sandbox_questions as u64,
            1,
            1_000_000,
        )?;
        within("rollout.max_turns", self.rollout.max_turns.into(), 1, 64)?;
        within(
            "rollout.max_turn_tokens",
            self.rollout.max_turn_tokens.into(),
            1,
            32_768,
        )?;
        within("rollout.concurrency", self.rollout.concurrency as u64, 1, 4096)?;
        within(
            "rollout.max_tool_chars",
            self.rollout.max_tool_chars as u64,
            200,
            1_000_000,
        )?;
        within("eval.limit", self.eval.limit as u64, 0, 1_000_000)?;
        if let Some(sft) = &self.sft {
            within("sft.scripted_episodes", sft.scripted_episodes as u64, 1, 1_000_000)?;
        }
        if !(self.grpo.lr > 0.0 && self.grpo.lr <= 1.0) {
            return Err(format!(
                "grpo.lr must be above 0 and at most 1, got {} (the paper uses 1e-6)",
                self.grpo.lr
            ));
        }
        if !(self.rollout.temperature > 0.0 && self.rollout.temperature <= 2.0) {
            return Err(format!(
                "rollout.temperature must be above 0 and at most 2 (GRPO needs sampled, varied rollouts), got {}",
                self.rollout.temperature
            ));
        }
        if !(1..=4).contains(&self.data.hops[0]) || !(self.data.hops[0]..=4).contains(&self.data.hops[1]) {
            return Err(format!(
                "data.hops must be [low, high] with 1 <= low <= high <= 4 (the sandbox's questions have 1 to 4 hops), got {:?}",
                self.data.hops
            ));
        }
        if self.data.sandbox_entities.is_some_and(|n| !(40..=200_000).contains(&n)) {
            return Err(format!(
                "data.sandbox_entities must be 40 to 200000, got {:?}",
                self.data.sandbox_entities
            ));
        }
        if self.data.sandbox_questions == 0 {
            return Err("data.sandbox_questions must be at least 1".into());
        }
        if self.data.group_size == 1 {
            return Err("data.group_size is 1: GRPO normalises rewards within a group, so a group of one learns nothing; use 2 or more (the paper uses 16)".into());
        }
        if !matches!(self.model.device.as_str(), "cpu") && !self.model.device.starts_with("cuda:") {
            return Err(format!("model.device '{}' is not cpu or cuda:N", self.model.device));
        }
        let t = &self.model.tiny;
        if !(1..=64).contains(&t.layers)
            || !(8..=4096).contains(&t.hidden)
            || t.heads == 0
            || t.kv_heads == 0
            || !t.hidden.is_multiple_of(t.heads)
            || !t.heads.is_multiple_of(t.kv_heads)
            || !(t.hidden / t.heads).is_multiple_of(2)
            || !(1..=65_536).contains(&t.intermediate)
            || !(512..=65_536).contains(&t.vocab)
        {
            return Err(format!(
                "model.tiny {t:?} is not a usable shape: 1-64 layers, hidden 8-4096 divisible by heads into even head sizes, heads divisible by kv_heads, intermediate 1-65536, vocab 512-65536"
            ));
        }
        if !matches!(self.model.dtype.as_str(), "f32" | "bf16") {
            return Err(format!("model.dtype '{}' is not f32 or bf16", self.model.dtype));
        }
        positive("grpo.lr", self.grpo.lr)?;
        if !matches!(self.grpo.schedule.as_str(), "constant" | "cosine") {
            return Err(format!(
                "grpo.schedule '{}' is not constant or cosine",
                self.grpo.schedule
            ));
        }
        if !(self.grpo.clip > 0.0 && self.grpo.clip < 1.0) {
            return Err(format!("grpo.clip must be in (0, 1), got {}", self.grpo.clip));
        }
        for (name, v) in [
            ("grpo.kl_coef", self.grpo.kl_coef),
            ("grpo.entropy_coef", self.grpo.entropy_coef),
            ("grpo.max_grad_norm", self.grpo.max_grad_norm),
            ("grpo.weight_decay", self.grpo.weight_decay),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("{name} must be 0 or more, got {v}"));
            }
        }
        if self.grpo.micro_batch == 0 {
            return Err("grpo.micro_batch must be at least 1".into());
        }
        if !(1..=self.data.questions_per_step as usize).contains(&self.grpo.mini_batches) {
            return Err(format!(
                "grpo.mini_batches must be 1 to data.questions_per_step ({}): each mini-batch holds whole groups; got {}",
                self.data.questions_per_step, self.grpo.mini_batches
            ));
        }
        if self.rollout.max_tool_chars < 200 {
            return Err(format!(
                "rollout.max_tool_chars must be at least 200 (one search result), got {}",
                self.rollout.max_tool_chars
            ));
        }
        if self.rollout.max_turns == 0 || self.rollout.max_turn_tokens == 0 || self.rollout.concurrency == 0 {
            return Err("rollout.max_turns, rollout.max_turn_tokens and rollout.concurrency must be at least 1".into());
        }
        if !(self.rollout.top_p > 0.0 && self.rollout.top_p <= 1.0) {
            return Err(format!("rollout.top_p must be in (0, 1], got {}", self.rollout.top_p));
        }
        if self.checkpoint.every == 0 || self.checkpoint.keep_last == 0 {
            return Err("checkpoint.every and checkpoint.keep_last must be at least 1".into());
        }
        if !(self.eval.temperature >= 0.0 && self.eval.temperature <= 2.0) {
            return Err(format!(
                "eval.temperature must be 0 (greedy) to 2, got {}",
                self.eval.temperature
            ));
        }
        if !(1..=64).contains(&self.eval.samples) {
            return Err(format!(
                "eval.samples must be 1 to 64 episodes per question, got {}",
                self.eval.samples
            ));
        }
        if !matches!(self.checkpoint.keep_best.as_str(), "" | "reward" | "eval_f1") {
            return Err(format!(
                "checkpoint.keep_best '{}' is not reward, eval_f1 or empty",
                self.checkpoint.keep_best
            ));
        }
        if let Some(sft) = &self.sft {
            positive("sft.lr", sft.lr)?;
            if sft.lr > 1.0 {
                return Err(format!("sft.lr must be at most 1, got {}", sft.lr));
            }
            if !(0.0..=1.0).contains(&sft.guesses) {
                return Err(format!("sft.guesses must be a share from 0 to 1, got {}", sft.guesses));
            }
            if !matches!(sft.schedule.as_str(), "constant" | "cosine") {
                return Err(format!("sft.schedule '{}' is not constant or cosine", sft.schedule));
            }
            if sft.epochs == 0 || sft.batch == 0 {
                return Err("sft.epochs and sft.batch must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
    }

    #[test]
    fn the_examples_load_and_the_gpu_one_has_the_papers_settings() {
        let tiny = TrainConfig::load(&example("tiny-cpu.toml")).unwrap();
        assert_eq!(tiny.model.path, "init-tiny");
        assert!(tiny.sft.is_some());
        let learn = TrainConfig::load(&example("sandbox-learn.toml")).unwrap();
        assert_eq!(learn.data.hops, [1, 2]);
        assert!(learn.eval.every > 0);
        let paper = TrainConfig::load(&example("qwen2.5-7b-gpu.toml")).unwrap();
        assert_eq!((paper.data.questions_per_step, paper.data.group_size), (256, 16));
        assert_eq!(paper.grpo.lr, 1e-6);
        assert_eq!(
            (paper.grpo.clip, paper.grpo.kl_coef, paper.grpo.entropy_coef),
            (0.2, 0.001, 0.001)
        );
        assert_eq!(paper.model.device, "cuda:0");
    }

    #[test]
    fn bad_configs_name_the_field_and_what_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::read_to_string(example("tiny-cpu.toml")).unwrap();
        let check = |text: &str, expect: &str| {
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).unwrap();
            let e = TrainConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(expect), "expected '{expect}' in: {e}");
        };
        // One setting changed from the example, and what the refusal says.
        for (from, to, expect) in [
            ("group_size = 8", "group_size = 1", "a group of one learns nothing"),
            ("samples = 4", "samples = 0", "eval.samples must be 1 to 64"),
            ("guesses = 0.3", "guesses = 1.5", "sft.guesses must be a share"),
            (
                "mini_batches = 1",
                "mini_batches = 9",
                "grpo.mini_batches must be 1 to data.questions_per_step (8)",
            ),
            ("heads = 4\n", "heads = 3\n", "model.tiny"),
            (
                "sandbox_entities = 6000",
                "sandbox_entities = 10",
                "data.sandbox_entities must be 40 to 200000",
            ),
            ("prompt = \"compact\"", "prompt = \"short\"", "unknown variant `short`"),
            ("[grpo]", "[grpo]\nlearning_rate = 0.1", "unknown field `learning_rate`"),
            ("clip = 0.2", "clip = 2.0", "grpo.clip must be in (0, 1)"),
            ("device = \"cpu\"", "device = \"tpu\"", "model.device 'tpu'"),
            ("lr = 1e-3", "lr = 1e308", "grpo.lr must be above 0 and at most 1"),
            (
                "temperature = 1.0\n",
                "temperature = inf\n",
                "rollout.temperature must be above 0 and at most 2",
            ),
            (
                "sandbox_questions = 3000",
                "sandbox_questions = 1000000000000",
                "data.sandbox_questions must be 1 to 1000000",
            ),
            (
                "group_size = 8",
                "group_size = 100000000",
                "data.group_size must be 1 to 256",
            ),
            (
                "max_turn_tokens = 64",
                "max_turn_tokens = 4294967295",
                "rollout.max_turn_tokens must be 1 to 32768",
            ),
            (
                "questions_per_step = 8",
                "questions_per_step = 16384",
                "episodes per step, more than 65536",
            ),
        ] {
            check(&base.replace(from, to), expect);
        }
        check("name = \"x\"", "missing field");
    }
}
