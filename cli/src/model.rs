//! `fathom model …`: make and inspect model directories.

use std::path::PathBuf;
use std::process::ExitCode;

use fathom_model::init::{TinySpec, write_tiny};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Write a tiny, randomly initialised Qwen2 model directory (Hugging Face layout) with a BPE
    /// tokenizer trained on sandbox text, for tests and the demo.
    InitTiny(InitTinyArgs),
    /// Print a model directory's shape, parameter count and tokenizer.
    Info {
        /// The model directory.
        dir: PathBuf,
    },
}

/// Arguments of `fathom model init-tiny`.
#[derive(Debug, clap::Args)]
pub struct InitTinyArgs {
    /// Where to write the model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Transformer blocks.
    #[arg(long, default_value_t = TinySpec::default().layers)]
    pub layers: usize,
    /// Residual width.
    #[arg(long, default_value_t = TinySpec::default().hidden)]
    pub hidden: usize,
    /// Query heads.
    #[arg(long, default_value_t = TinySpec::default().heads)]
    pub heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = TinySpec::default().kv_heads)]
    pub kv_heads: usize,
    /// MLP width (default: about 2.7 times the residual width).
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Vocabulary size of the trained BPE tokenizer.
    #[arg(long, default_value_t = TinySpec::default().vocab)]
    pub vocab: usize,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the sandbox world whose pages train the tokenizer.
    #[arg(long, default_value_t = 1)]
    pub sandbox_seed: u64,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::InitTiny(args) => init_tiny(args),
        ModelCommand::Info { dir } => info(&dir),
    }
}

fn init_tiny(args: InitTinyArgs) -> anyhow::Result<ExitCode> {
    if args.out.join("config.json").exists() {
        anyhow::bail!(
            "{} already holds a model (config.json); choose another --out or remove it first",
            args.out.display()
        );
    }
    if args.heads == 0 || !args.hidden.is_multiple_of(args.heads) {
        anyhow::bail!(
            "--hidden ({}) must be a positive multiple of --heads ({})",
            args.hidden,
            args.heads
        );
    }
    let spec = TinySpec {
        layers: args.layers,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        intermediate: args.intermediate.unwrap_or((args.hidden * 8 / 3).div_ceil(4) * 4),
        vocab: args.vocab,
        seed: args.seed,
        ..TinySpec::default()
    };
    let texts = tokenizer_corpus(args.sandbox_seed);
    let config = write_tiny(&args.out, &spec, texts.iter())?;
    println!(
        "wrote {}: Qwen2, {} layers, hidden {}, {} heads ({} key/value), vocabulary {}, {} parameters",
        args.out.display(),
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.kv_heads(),
        config.vocab_size,
        config.parameter_count()
    );
    println!(
        "next: 'fathom model info {}', 'fathom eval --policy candle:{} --limit 5'",
        args.out.display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Text the tiny tokenizer learns from: the sandbox's pages and questions,
/// and the protocol's prompt and turn shapes.
fn tokenizer_corpus(seed: u64) -> Vec<String> {
    let world = fathom_sandbox::world::World::generate(seed, 300);
    let mut texts: Vec<String> = fathom_sandbox::pages::render(&world)
        .into_iter()
        .map(|p| p.text)
        .collect();
    texts.extend(
        fathom_sandbox::questions::generate(&world, seed, 400, 1..=4)
            .into_iter()
            .map(|q| format!("{} {}", q.text, q.answers.join(" "))),
    );
    let prompt = fathom_core::protocol::render_chat(
        &[fathom_core::protocol::Message::System(
            fathom_core::protocol::system_prompt("2026-01-01"),
        )],
        true,
    );
    for _ in 0..20 {
        texts.push(prompt.clone());
        texts.push(
            "<think>I will search for it first.</think>\n<tool_call>\n{\"name\": \"web_search\", \"arguments\": {\"query\": [\"who founded\"]}}\n</tool_call>"
                .into(),
        );
        texts.push("<think>The page says so.</think>\n<answer>unknown</answer>".into());
    }
    texts
}

fn info(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = fathom_model::Qwen2Config::load(dir)?;
    let tokenizer = fathom_model::ChatTokenizer::load(dir)?;
    let files = fathom_model::dir::weight_files(dir)?;
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!("model        {}", dir.display());
    println!(
        "architecture {} ({})",
        config.architectures.join(", "),
        config.model_type
    );
    println!(
        "shape        {} layers, hidden {}, MLP {}, {} heads of {} ({} key/value heads), {} positions",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.head_dim(),
        config.kv_heads(),
        config.max_position_embeddings
    );
    println!(
        "parameters   {} ({}tied embeddings)",
        config.parameter_count(),
        if config.tie_word_embeddings { "" } else { "un" }
    );
    println!(
        "weights      {} file(s), {}, saved as {}",
        files.len(),
        crate::bytes(bytes),
        config.torch_dtype.as_deref().unwrap_or("?")
    );
    let tags: Vec<&str> = fathom_model::tokenizer::PROTOCOL_TAGS
        .iter()
        .copied()
        .filter(|t| tokenizer.encode(t).map(|ids| ids.len() == 1).unwrap_or(false))
        .collect();
    println!(
        "tokenizer    {} tokens; turn ends at {:?}; protocol tags as single tokens: {}",
        tokenizer.vocab_size(),
        tokenizer.end_ids(),
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(" ")
        }
    );
    Ok(ExitCode::SUCCESS)
}
