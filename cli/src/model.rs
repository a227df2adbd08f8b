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
    /// Time generation (tokens/s, greedy, with the KV cache) and a forward+backward pass
    /// (tokens/s) of a model directory on the CPU; `scripts/bench-model` compares it with PyTorch.
    Bench {
        /// The model directory.
        dir: PathBuf,
        /// Tokens to generate per run.
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Sequence length of the forward+backward pass.
        #[arg(long, default_value_t = 512)]
        train_tokens: usize,
        /// Runs of each; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// The model's kernels: `fused` (fathom's, what new runs use) or
        /// `reference` (written out of small candle operations).
        #[arg(long, default_value = "fused", value_parser = ["fused", "reference"])]
        kernels: String,
        /// Where the model runs: `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The weights' dtype: `f32` or `bf16`.
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        dtype: String,
        /// Also decode this many sequences together (the rollouts' batch decoder, fused kernels
        /// only) and one at a time, and report both rates; 0 skips it.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=1024))]
        batch: u16,
    },
    /// Check a model directory against reference logits computed elsewhere (for example by the
    /// reference implementation in `scripts/hf_fixture.py`): exit 0 only if they agree.
    Check {
        /// The model directory.
        dir: PathBuf,
        /// JSON: `{"input_ids": [...], "logits": [[...], ...], "atol": 1e-4}`, and optionally
        /// `"text"` with its `"text_ids"` to check the tokenizer too.
        #[arg(long)]
        reference: PathBuf,
        /// Where the model runs (in f32): `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print the model's f32 logits for some ids as JSON in the form `check` reads, to compare
    /// devices (`scripts/gpu-check` checks CUDA against the CPU with it).
    Logits {
        /// The model directory.
        dir: PathBuf,
        /// Comma-separated token ids (at most 4,096).
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..=4096)]
        ids: Vec<u32>,
        /// Where the model runs: `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The tolerance to write for `check`.
        #[arg(long, default_value_t = 1e-4)]
        atol: f64,
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
    /// Size of that world (as `--sandbox-entities` of the commands that serve it).
    #[arg(long, default_value_t = 2000)]
    pub sandbox_entities: usize,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::InitTiny(args) => init_tiny(args),
        ModelCommand::Info { dir } => info(&dir),
        ModelCommand::Check { dir, reference, device } => check(&dir, &reference, &device),
        ModelCommand::Logits { dir, ids, device, atol } => logits(&dir, &ids, &device, atol),
        ModelCommand::Bench {
            dir,
            gen_tokens,
            train_tokens,
            repeats,
            kernels,
            batch,
            device,
            dtype,
        } => {
            let kernels = if kernels == "fused" {
                fathom_model::Kernels::Fused
            } else {
                fathom_model::Kernels::Reference
            };
            let device = fathom_trainer::candle_policy::parse_device(&device)?;
            let dtype = fathom_model::dir::parse_dtype(&dtype)?;
            let sizes = BenchSizes {
                gen_tokens,
                train_tokens,
                repeats,
                batch: usize::from(batch),
            };
            bench(&dir, &sizes, kernels, &device, dtype)
        }
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
    let texts = tokenizer_corpus(args.sandbox_seed, args.sandbox_entities);
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

/// Text the tiny tokenizer learns from: the world's pages and questions
/// (the world the demo and `fathom train` serve, `entities` entities from
/// `seed`), and the protocol's shapes filled with the world's names: both
/// system prompts, the turns the scripted researcher writes (searches,
/// browses and answers), and search results and pages as tool responses
/// render them. Frequent shapes become single tokens, so a tiny model's
/// sequences are short and its turns take few steps to write.
pub(crate) fn tokenizer_corpus(seed: u64, entities: usize) -> Vec<String> {
    use fathom_core::protocol::{self, PromptStyle, ToolCall};

    let world = fathom_sandbox::world::World::generate(seed, entities);
    let pages = fathom_sandbox::pages::render(&world);
    let mut texts: Vec<String> = pages.iter().map(|p| p.text.clone()).collect();
    for style in [PromptStyle::Paper, PromptStyle::Compact] {
        let opening = protocol::opening(style, "2026-01-01", "");
        for _ in 0..20 {
            texts.push(protocol::render_prompt(&opening, protocol::Protocol::CURRENT));
        }
    }
    // The scripted researcher's episodes, against tool responses made from
    // the world's pages the way the gateway renders them.
    let page_of = |name: &str| {
        world
            .by_name(name.trim())
            .and_then(|e| pages.iter().find(|p| p.entity == Some(e.id)).map(|p| (e, p)))
    };
    for (i, q) in fathom_sandbox::questions::generate(&world, seed, 1500, 1..=4)
        .into_iter()
        .enumerate()
    {
        texts.push(q.text.clone());
        let mut policy = fathom_trainer::scripted::ScriptedPolicy::new().reading_snippets(i % 2 == 0);
        let mut messages = protocol::opening(PromptStyle::Compact, "2026-01-01", &q.text);
        for turn in 0..8 {
            let Ok(g) = fathom_trainer::policy::Policy::generate(
                &mut policy,
                fathom_trainer::policy::PolicyInput {
                    question: &q.text,
                    messages: &messages,
                    turn,
                    seed: 0,
                    max_tokens: 2000,
                    protocol: protocol::Protocol::CURRENT,
                },
            ) else {
                break;
            };
            texts.push(g.text.clone());
            let response = match protocol::Protocol::CURRENT.parse_turn(&g.text).map(|t| t.action) {
                Ok(protocol::Action::ToolCall(ToolCall::WebSearch { query })) => {
                    let query = query.first().cloned().unwrap_or_default();
                    match page_of(&query) {
                        Some((e, p)) => {
                            let snippet: String = p.text.replace('\n', " ").chars().take(180).collect();
                            format!(
                                "## Results for \"{query}\"\n\n[1] {}\nURL: http://127.0.0.1:893{}/{}\n{snippet}",
                                e.name,
                                1 + i % 4,
                                e.slug
                            )
                        }
                        None => format!("## Results for \"{query}\"\nNo results."),
                    }
                }
                Ok(protocol::Action::ToolCall(ToolCall::BrowseWebpage { url_list })) => {
                    let url = url_list.first().cloned().unwrap_or_default();
                    let slug = url.rsplit('/').next().unwrap_or_default();
                    let text = pages
                        .iter()
                        .find(|p| p.path == format!("/{slug}"))
                        .map_or(String::new(), |p| p.text.clone());
                    format!("## {url}\n{text}")
                }
                _ => break,
            };
            let wrapped = protocol::tool_response(&response);
            texts.push(wrapped.clone());
            messages.push(protocol::Message::Assistant(g.text));
            messages.push(protocol::Message::Tool(wrapped));
        }
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

fn logits(dir: &std::path::Path, ids: &[u32], device: &str, atol: f64) -> anyhow::Result<ExitCode> {
    let device = fathom_trainer::candle_policy::parse_device(device)?;
    let m = fathom_model::load(dir, &device, candle_core::DType::F32)?;
    let vocab = m.config.vocab_size;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        anyhow::bail!("--ids: {bad} is outside the model's vocabulary of {vocab}");
    }
    let x = candle_core::Tensor::new(ids, &device)?.unsqueeze(0)?;
    let rows: Vec<Vec<f32>> = m.model.forward(&x, 0, None)?.squeeze(0)?.to_vec2()?;
    let v = serde_json::json!({"input_ids": ids, "logits": rows, "atol": atol});
    println!("{}", serde_json::to_string(&v)?);
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &std::path::Path, reference: &std::path::Path, device: &str) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(reference).with_context(|| format!("reading {}", reference.display()))?;
    let r: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", reference.display()))?;
    let ids: Vec<u32> = serde_json::from_value(r["input_ids"].clone())
        .with_context(|| format!("{}: input_ids must be a list of token ids", reference.display()))?;
    let want: Vec<Vec<f64>> = serde_json::from_value(r["logits"].clone())
        .with_context(|| format!("{}: logits must be a list of rows", reference.display()))?;
    let atol = r["atol"].as_f64().unwrap_or(1e-4);
    let device = fathom_trainer::candle_policy::parse_device(device)?;
    let m = fathom_model::load(dir, &device, candle_core::DType::F32)?;
    let mut ok = true;
    if let (Some(t), Some(expected)) = (r["text"].as_str(), r["text_ids"].as_array()) {
        let got = m.tokenizer.encode(t)?;
        let expected: Vec<u32> = expected.iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect();
        if got == expected {
            println!("tokenizer    {} ids for the reference text, as expected", got.len());
        } else {
            println!("tokenizer    MISMATCH: got {got:?}, expected {expected:?}");
            ok = false;
        }
    }
    let x = candle_core::Tensor::new(&ids[..], &device)?.unsqueeze(0)?;
    let got: Vec<Vec<f32>> = m.model.forward(&x, 0, None)?.squeeze(0)?.to_vec2()?;
    if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| a.len() != b.len()) {
        anyhow::bail!(
            "shape mismatch: the model gives {} x {} logits, the reference {} x {}",
            got.len(),
            got.first().map_or(0, Vec::len),
            want.len(),
            want.first().map_or(0, Vec::len)
        );
    }
    let mut worst = (0.0f64, 0usize, 0usize);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (f64::from(*x) - y).abs();
            if d > worst.0 {
                worst = (d, i, j);
            }
        }
    }
    let agree = worst.0 <= atol;
    println!(
        "logits       {} positions x {} tokens; largest difference {:.2e} (position {}, token {}); tolerance {atol:.0e}: {}",
        got.len(),
        got[0].len(),
        worst.0,
        worst.1,
        worst.2,
        if agree { "agree" } else { "DIFFER" }
    );
    Ok(if ok && agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How much `fathom model bench` runs.
struct BenchSizes {
    gen_tokens: usize,
    train_tokens: usize,
    repeats: usize,
    batch: usize,
}

fn bench(
    dir: &std::path::Path,
    sizes: &BenchSizes,
    kernels: fathom_model::Kernels,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> anyhow::Result<ExitCode> {
    use candle_core::Tensor;
    use fathom_core::{Clock, SystemClock};
    use fathom_model::generate::{Request, generate};
    use fathom_model::sample::Sampling;
    let &BenchSizes {
        gen_tokens,
        train_tokens,
        repeats,
        batch,
    } = sizes;
    let repeats = repeats.max(1);
    let mut m = fathom_model::load(dir, device, dtype)?;
    let kernels = m.model.set_kernels(kernels);
    let clock = SystemClock;
    let vocab = m.config.vocab_size as u32;
    // Deterministic ids that are not special tokens.
    let ids = |n: usize| -> Vec<u32> { (0..n as u32).map(|i| 10 + (i * 37) % (vocab - 10)).collect() };
    let prompt = ids(16);
    let mut gen_rates = Vec::new();
    for _ in 0..repeats {
        let t0 = clock.now();
        let out = generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &prompt,
                max_new_tokens: gen_tokens,
                sampling: Sampling::GREEDY,
                seed: 0,
                stop: &[],
            },
        )?;
        // Generation may stop early at an end token; count what was made.
        gen_rates.push(out.ids.len() as f64 / (clock.now().nanos_since(t0) as f64 / 1e9));
    }
    let seq = ids(train_tokens + 1);
    let x = Tensor::new(&seq[..train_tokens], device)?.unsqueeze(0)?;
    let y = Tensor::new(&seq[1..], device)?;
    let mut train_rates = Vec::new();
    for _ in 0..repeats {
        let t0 = clock.now();
        let logits = m.model.forward(&x, 0, None)?.squeeze(0)?;
        let max = logits.max_keepdim(1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
        let taken = logits.gather(&y.unsqueeze(1)?, 1)?;
        let loss = (lse - taken)?.mean_all()?;
        let grads = loss.backward()?;
        std::hint::black_box(&grads);
        device.synchronize()?;
        train_rates.push(train_tokens as f64 / (clock.now().nanos_since(t0) as f64 / 1e9));
    }
    let batched = if batch > 0 && kernels == fathom_model::Kernels::Fused {
        Some(batch_rates(&m, &ids(16 + batch), batch, gen_tokens, repeats)?)
    } else {
        None
    };
    let mut v = serde_json::json!({
        "model": dir.display().to_string(),
        "parameters": m.config.parameter_count(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "generate_tokens_per_s": median(gen_rates),
        "train_tokens_per_s": median(train_rates),
        "gen_tokens": gen_tokens,
        "train_tokens": train_tokens,
        "kernels": kernels,
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}"),
    });
    if let (Some((alone, together)), Some(fields)) = (batched, v.as_object_mut()) {
        fields.insert("batch".into(), batch.into());
        fields.insert("alone_tokens_per_s".into(), alone.into());
        fields.insert("batched_tokens_per_s".into(), together.into());
    }
    println!("{}", serde_json::to_string(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// Median tokens/s of `n` sequences (each a 16-id prompt cut from `ids`,
/// `tokens` sampled at temperature 1) decoded one at a time, and together
/// by the batch decoder.
fn batch_rates(
    m: &fathom_model::LoadedModel,
    ids: &[u32],
    n: usize,
    tokens: usize,
    repeats: usize,
) -> anyhow::Result<(f64, f64)> {
    use fathom_core::{Clock, SystemClock};
    use fathom_model::batch::{Batcher, Job};
    use fathom_model::decode::Decoder;
    use fathom_model::generate::{Request, generate};
    use fathom_model::sample::Sampling;
    let clock = SystemClock;
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t0 = clock.now();
        let mut made = 0;
        for s in 0..n {
            let out = generate(
                &m.model,
                &m.tokenizer,
                &Request {
                    prompt: &ids[s..s + 16],
                    max_new_tokens: tokens,
                    sampling: hot,
                    seed: s as u64,
                    stop: &[],
                },
            )?;
            made += out.ids.len();
        }
        alone.push(made as f64 / (clock.now().nanos_since(t0) as f64 / 1e9));

        let t0 = clock.now();
        let batcher = Batcher::start(
            Decoder::of(&m.model)?,
            m.tokenizer.clone(),
            m.config.max_position_embeddings,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        for s in 0..n {
            let tx = tx.clone();
            batcher.submit(Job {
                cache: batcher.new_cache(),
                feed: ids[s..s + 16].to_vec(),
                max_new_tokens: tokens,
                sampling: hot,
                seed: s as u64,
                stop: Vec::new(),
                reply: Box::new(move |r| {
                    let _ = tx.send(r.map(|t| t.output.ids.len()));
                }),
            });
        }
        drop(tx);
        let mut made = 0;
        for r in rx {
            made += r?;
        }
        batcher.finish();
        together.push(made as f64 / (clock.now().nanos_since(t0) as f64 / 1e9));
    }
    Ok((median(alone), median(together)))
}
