//! The Qwen2 architecture, built only from operations that have a backward
//! pass (so gradients reach every parameter). Two implementations of the
//! inner operations ([`Kernels`]): RMSNorm, rotary positions and attention
//! written out of small candle operations (the reference, and what logs
//! recorded before fused kernels used), or fathom's fused CPU kernels with
//! hand-written backward passes ([`crate::fused`]).
//!
//! Weight names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`,
//! …), so a model directory loads as it is.

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::Qwen2Config;
use crate::fused::{self, Kernels};

/// candle's result type.
pub type Result<T> = candle_core::Result<T>;

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: vb.get(size, "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match kernels {
            Kernels::Fused => fused::rms_norm(x, &self.weight, self.eps),
            // Differentiable: squares, a mean, a sqrt and products.
            Kernels::Reference => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps),
        }
    }
}

/// Rotary position tables, `[positions, head_dim]`, in the model's dtype.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(config: &Qwen2Config, dtype: DType, device: &Device) -> Result<Rope> {
        let dim = config.head_dim();
        let positions = config.max_position_embeddings.clamp(1, 32_768);
        let inv: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / dim as f64) as f32)
            .collect();
        let inv = Tensor::from_vec(inv, (1, dim / 2), device)?;
        let pos = Tensor::arange(0u32, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok(Rope {
            cos: emb.cos()?.to_dtype(dtype)?,
            sin: emb.sin()?.to_dtype(dtype)?,
        })
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [b, heads, t, d]` at
    /// positions `offset..offset + t`.
    fn apply(&self, x: &Tensor, offset: usize, kernels: Kernels) -> Result<Tensor> {
        let (_, _, t, d) = x.dims4()?;
        if offset + t > self.cos.dim(0)? {
            candle_core::bail!(
                "sequence of {} tokens is longer than the model's {} positions",
                offset + t,
                self.cos.dim(0)?
            );
        }
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        if kernels == Kernels::Fused {
            return fused::rotary(x, &cos, &sin);
        }
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    mlp: Mlp,
    ln1: RmsNorm,
    ln2: RmsNorm,
}

/// Keys and values of the tokens seen so far, per layer (`[b, kv_heads,
/// seq, head_dim]`), for incremental generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Linear> {
    if bias {
        candle_nn::linear(i, o, vb)
    } else {
        candle_nn::linear_no_bias(i, o, vb)
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let shape = |y: Tensor, heads: usize| -> Result<Tensor> {
            y.reshape((b, t, heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = rope.apply(&shape(self.q.forward(x)?, self.heads)?, offset, kernels)?;
        let mut k = rope.apply(&shape(self.k.forward(x)?, self.kv_heads)?, offset, kernels)?;
        let mut v = shape(self.v.forward(x)?, self.kv_heads)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            // Generation never differentiates: the cache keeps values, not
            // the graph that made them.
            *slot = Some((k.detach(), v.detach()));
        }
        if kernels == Kernels::Fused {
            let out = fused::causal_attention(&q, &k, &v, offset)?.transpose(1, 2)?.reshape((
                b,
                t,
                self.heads * self.head_dim,
            ))?;
            return self.o.forward(&out);
        }
        let rep = self.heads / self.kv_heads;
        let (k, v) = if rep > 1 {
            let s = k.dim(2)?;
            let expand = |y: &Tensor| -> Result<Tensor> {
                Tensor::cat(&vec![y; rep], 2)?.reshape((b, self.heads, s, self.head_dim))
            };
            (expand(&k)?, expand(&v)?)
        } else {
            (k, v)
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&out)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (self.gate.forward(x)?.silu()? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

/// Borrowed weights of a model (see [`Qwen2::parts`]).
pub(crate) struct Parts<'a> {
    pub(crate) embed: &'a Tensor,
    pub(crate) blocks: Vec<BlockParts<'a>>,
    pub(crate) norm: &'a Tensor,
    pub(crate) lm_head: Option<&'a Linear>,
}

/// One block's weights.
pub(crate) struct BlockParts<'a> {
    pub(crate) ln1: &'a Tensor,
    pub(crate) q: &'a Linear,
    pub(crate) k: &'a Linear,
    pub(crate) v: &'a Linear,
    pub(crate) o: &'a Linear,
    pub(crate) ln2: &'a Tensor,
    pub(crate) gate: &'a Linear,
    pub(crate) up: &'a Linear,
    pub(crate) down: &'a Linear,
}

/// A Qwen2 causal language model.
#[derive(Debug, Clone)]
pub struct Qwen2 {
    config: Qwen2Config,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// `None` when tied to the embedding.
    lm_head: Option<Linear>,
    rope: Rope,
    device: Device,
    dtype: DType,
    kernels: Kernels,
}

impl Qwen2 {
    /// Builds the model from `vb`, whose tensors carry Hugging Face's names.
    pub fn new(config: &Qwen2Config, vb: VarBuilder<'_>) -> Result<Qwen2> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let head_dim = config.head_dim();
        let kv = config.kv_heads();
        let m = vb.pp("model");
        let embed = candle_nn::embedding(config.vocab_size, h, m.pp("embed_tokens"))?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let b = m.pp(format!("layers.{l}"));
            let a = b.pp("self_attn");
            let p = b.pp("mlp");
            blocks.push(Block {
                attn: Attention {
                    q: linear(h, config.num_attention_heads * head_dim, true, a.pp("q_proj"))?,
                    k: linear(h, kv * head_dim, true, a.pp("k_proj"))?,
                    v: linear(h, kv * head_dim, true, a.pp("v_proj"))?,
                    o: linear(config.num_attention_heads * head_dim, h, false, a.pp("o_proj"))?,
                    heads: config.num_attention_heads,
                    kv_heads: kv,
                    head_dim,
                },
                mlp: Mlp {
                    gate: linear(h, i, false, p.pp("gate_proj"))?,
                    up: linear(h, i, false, p.pp("up_proj"))?,
                    down: linear(i, h, false, p.pp("down_proj"))?,
                },
                ln1: RmsNorm::new(h, config.rms_norm_eps, b.pp("input_layernorm"))?,
                ln2: RmsNorm::new(h, config.rms_norm_eps, b.pp("post_attention_layernorm"))?,
            });
        }
        let norm = RmsNorm::new(h, config.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(linear(h, config.vocab_size, false, vb.pp("lm_head"))?)
        };
        Ok(Qwen2 {
            config: config.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope: Rope::new(config, vb.dtype(), vb.device())?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            kernels: Kernels::Reference,
        })
    }

    /// References to the weights, for [`crate::decode::Decoder`].
    pub(crate) fn parts(&self) -> Parts<'_> {
        Parts {
            embed: self.embed.embeddings(),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockParts {
                    ln1: &b.ln1.weight,
                    q: &b.attn.q,
                    k: &b.attn.k,
                    v: &b.attn.v,
                    o: &b.attn.o,
                    ln2: &b.ln2.weight,
                    gate: &b.mlp.gate,
                    up: &b.mlp.up,
                    down: &b.mlp.down,
                })
                .collect(),
            norm: &self.norm.weight,
            lm_head: self.lm_head.as_ref(),
        }
    }

    /// The implementation of the inner operations in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Switches the implementation of the inner operations; the fused
    /// kernels exist for f32 on the CPU only (other models keep the
    /// reference, which this returns).
    pub fn set_kernels(&mut self, kernels: Kernels) -> Kernels {
        self.kernels = if kernels == Kernels::Fused && Kernels::best_for(&self.device, self.dtype) != Kernels::Fused {
            Kernels::Reference
        } else {
            kernels
        };
        self.kernels
    }

    /// The configuration.
    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A fresh cache for incremental generation.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.blocks.len()],
        }
    }

    /// The causal mask the kernels need (the fused attention masks itself).
    fn mask(&self, t: usize, offset: usize) -> Result<Option<Tensor>> {
        match self.kernels {
            Kernels::Reference => self.causal_mask(t, offset),
            Kernels::Fused => Ok(None),
        }
    }

    fn causal_mask(&self, t: usize, offset: usize) -> Result<Option<Tensor>> {
        if t == 1 {
            return Ok(None);
        }
        let s = offset + t;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..s).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Some(Tensor::from_vec(mask, (t, s), &self.device)?))
    }

    /// Logits (f32, `[b, t, vocab]`) for `ids: [b, t]` at positions
    /// `offset..offset + t`. With a cache, the keys and values of these
    /// tokens are added to it (and `offset` must equal its length).
    pub fn forward(&self, ids: &Tensor, offset: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        // With a cache this is generation: nothing is differentiated, so
        // no block keeps the graph of the one before.
        let keep_graph = cache.is_none();
        self.logits(&self.hidden_impl(ids, offset, cache, keep_graph)?)
    }

    /// [`Qwen2::hidden`] for passes that are never differentiated (old and
    /// reference log-probs): each block's output is detached, so only one
    /// block's intermediates are alive at a time. The values are the same.
    pub fn hidden_detached(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.hidden_impl(ids, 0, None, false)?.detach())
    }

    /// The final (normed) hidden states `[b, t, hidden]`, before the
    /// output projection: training computes logits only where tokens carry
    /// loss.
    pub fn hidden(&self, ids: &Tensor, offset: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.hidden_impl(ids, offset, cache, true)
    }

    fn hidden_impl(
        &self,
        ids: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
        keep_graph: bool,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if let Some(c) = cache.as_deref()
            && c.len() != offset
        {
            candle_core::bail!("the cache holds {} tokens but the offset is {offset}", c.len());
        }
        let k = self.kernels;
        let mask = self.mask(t, offset)?;
        let mut x = self.embed.forward(ids)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = self.block(block, &x, offset, mask.as_ref(), slot)?;
            if !keep_graph {
                x = x.detach();
            }
        }
        self.norm.forward(&x, k)
    }

    /// One transformer block: `x + attn(ln1 x)`, then `+ mlp(ln2 ·)`.
    fn block(
        &self,
        block: &Block,
        x: &Tensor,
        offset: usize,
        mask: Option<&Tensor>,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let k = self.kernels;
        let a = block
            .attn
            .forward(&block.ln1.forward(x, k)?, &self.rope, offset, mask, slot, k)?;
        let x = (x + a)?;
        let m = block.mlp.forward(&block.ln2.forward(&x, k)?)?;
        x + m
    }

    /// Every weight tensor of the model.
    fn weights(&self) -> Vec<&Tensor> {
        let p = self.parts();
        let mut out = vec![p.embed, p.norm];
        for b in &p.blocks {
            out.extend([b.ln1, b.ln2]);
            for linear in [b.q, b.k, b.v, b.o, b.gate, b.up, b.down] {
                out.push(linear.weight());
                out.extend(linear.bias());
            }
        }
        if let Some(head) = p.lm_head {
            out.push(head.weight());
        }
        out
    }

    /// A training pass with activation checkpointing: the loss `head`
    /// computes from the final hidden states of `ids` (`[b, t]`, as
    /// [`Qwen2::hidden`] gives them), and the gradients of that loss with
    /// respect to every weight, while keeping only each block's input for
    /// the backward pass instead of every intermediate of every block.
    ///
    /// The forward pass runs block by block without keeping its graph.
    /// The backward pass goes from the top: the head's loss is
    /// differentiated with respect to the last block's output; then each
    /// block is run again from its kept input and `sum(output · g)`, with
    /// `g` the gradient arriving at its output, is differentiated, giving
    /// the block's weight gradients and the gradient at its input; the
    /// embedding last. The mathematics is the full backward pass's; only
    /// the order of a few sums differs (the tied embedding's two
    /// contributions), so gradients agree to rounding. Returns the loss
    /// (detached), what `head` returned beside it, and the weights'
    /// gradients.
    pub fn checkpointed_backward<T>(
        &self,
        ids: &Tensor,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, T)>,
    ) -> Result<(Tensor, T, GradStore)> {
        let (_, t) = ids.dims2()?;
        let mask = self.mask(t, 0)?;
        let weights = self.weights();
        let mut grads = GradStore::default();
        let mut keep = |store: GradStore| -> Result<()> {
            let mut kept = GradStore::default();
            for w in &weights {
                if let Some(g) = store.get(w) {
                    kept.insert(w, g.clone());
                }
            }
            grads.extend(kept)
        };
        // Forward, keeping each block's input only.
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut x = self.embed.forward(ids)?.detach();
        for block in &self.blocks {
            let next = self.block(block, &x, 0, mask.as_ref(), None)?.detach();
            inputs.push(x);
            x = next;
        }
        // The head, from the last block's output.
        let top = Var::from_tensor(&x)?;
        drop(x);
        let (loss, extra) = head(&self.norm.forward(top.as_tensor(), self.kernels)?)?;
        let store = loss.backward()?;
        // The head's graph (logits, log-softmax) is not needed again.
        let loss = loss.detach();
        let Some(mut g) = store.get(top.as_tensor()).cloned() else {
            // The loss does not depend on the hidden states (nothing
            // carries loss): no gradient reaches the blocks.
            keep(store)?;
            return Ok((loss, extra, grads));
        };
        keep(store)?;
        // Each block again, from the top.
        for (block, input) in self.blocks.iter().zip(inputs).rev() {
            let input = Var::from_tensor(&input)?;
            let out = self.block(block, input.as_tensor(), 0, mask.as_ref(), None)?;
            let store = (out * &g)?.sum_all()?.backward()?;
            g = store
                .get(input.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no gradient reached a block's input".into()))?;
            keep(store)?;
        }
        let embedded = self.embed.forward(ids)?;
        keep((embedded * &g)?.sum_all()?.backward()?)?;
        Ok((loss, extra, grads))
    }

    /// Logits (f32) of final hidden states `[..., hidden]` (from
    /// [`Qwen2::hidden`], perhaps only some positions of them).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden)?,
            None => hidden.broadcast_matmul(&self.embed.embeddings().t()?)?,
        };
        logits.to_dtype(DType::F32)
    }
}
