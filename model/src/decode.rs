//! Generation without candle's per-operation overhead: the model's weights
//! copied into plain f32 vectors, and each new token run through the layers
//! with the loops of [`crate::fused`] (f32 on the CPU, the fused kernels'
//! domain). A tiny model spends most of a candle forward pass of one token
//! in dispatching a hundred small operations; here it spends it computing.
//!
//! Every token's computation is the same loops whatever else is processed
//! with it (prompt tokens together, or one at a time), so a sequence's
//! logits never depend on how its tokens were grouped. The log-probs
//! differ from the training forward pass (candle's matrix products sum in
//! another order) by about 1e-6, which the trainer's check allows (1e-4).

use candle_core::Tensor;
use rayon::prelude::*;

use crate::Qwen2;
use crate::fused::dot;

type Result<T> = candle_core::Result<T>;

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Tokens per tile of [`Matrix::apply`].
const TOKEN_TILE: usize = 32;

/// A weight matrix `[rows, cols]` (row-major, as candle's `Linear` holds
/// it: `y = W x + b`).
struct Matrix {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    fn of(linear: &candle_nn::Linear) -> Result<Matrix> {
        let (rows, cols) = linear.weight().dims2()?;
        Ok(Matrix {
            w: flat(linear.weight())?,
            b: linear.bias().map(flat).transpose()?,
            rows,
            cols,
        })
    }

    /// `y = W x (+ b)` for each of the `n` rows of `x` (`[n, cols]`),
    /// output rows split among threads by fixed chunks.
    fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * self.rows];
        let chunk = 64usize;
        // Parallel over blocks of output rows; each element one dot product.
        let blocks: Vec<(usize, Vec<f32>)> = (0..self.rows.div_ceil(chunk))
            .into_par_iter()
            .map(|blk| {
                let lo = blk * chunk;
                let hi = (lo + chunk).min(self.rows);
                let mut out = vec![0.0f32; n * (hi - lo)];
                // Tiles of tokens, so that a long prompt's rows stay in
                // cache while the block's weight rows pass over them.
                for t0 in (0..n).step_by(TOKEN_TILE) {
                    let t1 = (t0 + TOKEN_TILE).min(n);
                    for j in lo..hi {
                        let wj = &self.w[j * self.cols..(j + 1) * self.cols];
                        let bj = self.b.as_ref().map_or(0.0, |b| b[j]);
                        for t in t0..t1 {
                            out[t * (hi - lo) + (j - lo)] = dot(wj, &x[t * self.cols..(t + 1) * self.cols]) + bj;
                        }
                    }
                }
                (lo, out)
            })
            .collect();
        for (lo, out) in blocks {
            let width = out.len() / n.max(1);
            for t in 0..n {
                y[t * self.rows + lo..t * self.rows + lo + width].copy_from_slice(&out[t * width..(t + 1) * width]);
            }
        }
        y
    }
}

struct Layer {
    ln1: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    ln2: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// A model's weights for generation (see the module's documentation).
pub struct Decoder {
    layers: Vec<Layer>,
    norm: Vec<f32>,
    embed: Vec<f32>,
    head: Option<Matrix>,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    eps: f32,
    inv_freq: Vec<f32>,
    max_positions: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("layers", &self.layers.len())
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

/// The keys and values of one sequence's tokens so far, per layer
/// (`[kv_heads, positions, head_dim]`, grown as tokens come).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
    len: usize,
}

impl Cache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for row in x.chunks_mut(n) {
        let r = 1.0 / (dot(row, row) / n as f32 + eps).sqrt();
        for (xi, wi) in row.iter_mut().zip(w) {
            *xi = *xi * r * wi;
        }
    }
}

impl Decoder {
    /// The weights of `model` as they are now (a copy: take a new one after
    /// an optimizer step).
    pub fn of(model: &Qwen2) -> Result<Decoder> {
        let parts = model.parts();
        let c = model.config();
        let layers = parts
            .blocks
            .iter()
            .map(|b| {
                Ok(Layer {
                    ln1: flat(b.ln1)?,
                    q: Matrix::of(b.q)?,
                    k: Matrix::of(b.k)?,
                    v: Matrix::of(b.v)?,
                    o: Matrix::of(b.o)?,
                    ln2: flat(b.ln2)?,
                    gate: Matrix::of(b.gate)?,
                    up: Matrix::of(b.up)?,
                    down: Matrix::of(b.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let d = c.head_dim();
        Ok(Decoder {
            layers,
            norm: flat(parts.norm)?,
            embed: flat(parts.embed)?,
            head: parts.lm_head.map(Matrix::of).transpose()?,
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: d,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
            // As the model's rotary table computes them.
            inv_freq: (0..d / 2)
                .map(|i| 1.0 / c.rope_theta.powf(2.0 * i as f64 / d as f64) as f32)
                .collect(),
            max_positions: c.max_position_embeddings.clamp(1, 32_768),
        })
    }

    /// The longest sequence it runs.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Ids it knows (`0..vocab`).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> Cache {
        Cache {
            keys: vec![vec![Vec::new(); self.kv_heads]; self.layers.len()],
            values: vec![vec![Vec::new(); self.kv_heads]; self.layers.len()],
            len: 0,
        }
    }

    /// Rotates `x` (`[heads, head_dim]`) for position `pos`.
    fn rope(&self, x: &mut [f32], heads: usize, pos: usize) {
        let (d, half) = (self.head_dim, self.head_dim / 2);
        let mut cos = vec![0.0f32; d];
        let mut sin = vec![0.0f32; d];
        for (i, f) in self.inv_freq.iter().enumerate() {
            let a = pos as f32 * f;
            cos[i] = a.cos();
            cos[i + half] = cos[i];
            sin[i] = a.sin();
            sin[i + half] = sin[i];
        }
        for h in 0..heads {
            let v = &mut x[h * d..(h + 1) * d];
            for a in 0..half {
                let (x1, x2) = (v[a], v[a + half]);
                v[a] = x1 * cos[a] - x2 * sin[a];
                v[a + half] = x2 * cos[a + half] + x1 * sin[a + half];
            }
        }
    }

    /// Runs `tokens` after what `cache` holds; adds their keys and values
    /// to it and returns the logits after the last token.
    pub fn forward(&self, cache: &mut Cache, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [(cache, tokens)])?;
        Ok(out.pop().expect("one sequence in, one row of logits out"))
    }

    /// Runs several sequences' new tokens in one pass (each after what its
    /// cache holds): the weight matrices are applied to all their tokens
    /// at once, attention stays within each sequence. Returns the logits
    /// after each sequence's last token. Every token's computation is the
    /// same whatever else is in the batch, so a sequence's logits, and so
    /// its sampled ids, never depend on which other sequences shared it.
    pub fn forward_batch(&self, seqs: &mut [(&mut Cache, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let (h, d) = (self.hidden, self.head_dim);
        // Each row: (sequence, position).
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut last_rows: Vec<usize> = Vec::with_capacity(seqs.len());
        for (s, (cache, tokens)) in seqs.iter().enumerate() {
            if tokens.is_empty() {
                candle_core::bail!("decode: no tokens to run");
            }
            if cache.len + tokens.len() > self.max_positions {
                candle_core::bail!(
                    "sequence of {} tokens is longer than the model's {} positions",
                    cache.len + tokens.len(),
                    self.max_positions
                );
            }
            rows.extend((0..tokens.len()).map(|t| (s, cache.len + t)));
            last_rows.push(rows.len() - 1);
        }
        let n = rows.len();
        let mut x = vec![0.0f32; n * h];
        for (r, &id) in seqs.iter().flat_map(|(_, tokens)| tokens.iter()).enumerate() {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("decode: token id {id} is outside the vocabulary of {}", self.vocab);
            }
            x[r * h..(r + 1) * h].copy_from_slice(&self.embed[id * h..(id + 1) * h]);
        }
        let rep = self.heads / self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let (qw, kw) = (self.heads * d, self.kv_heads * d);
        for (l, layer) in self.layers.iter().enumerate() {
            let mut a = x.clone();
            rms_norm(&mut a, &layer.ln1, self.eps);
            let mut q = layer.q.apply(&a, n);
            let mut k = layer.k.apply(&a, n);
            let v = layer.v.apply(&a, n);
            for (r, &(s, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[r * qw..(r + 1) * qw], self.heads, pos);
                self.rope(&mut k[r * kw..(r + 1) * kw], self.kv_heads, pos);
                let cache = &mut *seqs[s].0;
                for g in 0..self.kv_heads {
                    cache.keys[l][g].extend_from_slice(&k[r * kw + g * d..r * kw + (g + 1) * d]);
                    cache.values[l][g].extend_from_slice(&v[r * kw + g * d..r * kw + (g + 1) * d]);
                }
            }
            // Attention of each new token over its own sequence's cache up
            // to itself.
            let caches: Vec<&Cache> = seqs.iter().map(|(c, _)| &**c).collect();
            let mut att = vec![0.0f32; n * qw];
            att.par_chunks_mut(qw).enumerate().for_each(|(r, out)| {
                let (s, pos) = rows[r];
                let mut p = vec![0.0f32; pos + 1];
                for head in 0..self.heads {
                    let g = head / rep;
                    let (keys, values) = (&caches[s].keys[l][g], &caches[s].values[l][g]);
                    let qi = &q[r * qw + head * d..r * qw + (head + 1) * d];
                    let mut m = f32::NEG_INFINITY;
                    for j in 0..=pos {
                        let sc = dot(qi, &keys[j * d..(j + 1) * d]) * scale;
                        p[j] = sc;
                        m = m.max(sc);
                    }
                    let mut sum = 0.0f32;
                    for pj in p.iter_mut() {
                        *pj = (*pj - m).exp();
                        sum += *pj;
                    }
                    let inv = 1.0 / sum;
                    let o = &mut out[head * d..(head + 1) * d];
                    for j in 0..=pos {
                        let w = p[j] * inv;
                        for (oi, vi) in o.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                            *oi += w * vi;
                        }
                    }
                }
            });
            let o = layer.o.apply(&att, n);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
            let mut b = x.clone();
            rms_norm(&mut b, &layer.ln2, self.eps);
            let gate = layer.gate.apply(&b, n);
            let up = layer.up.apply(&b, n);
            let mixed: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = layer.down.apply(&mixed, n);
            for (xi, di) in x.iter_mut().zip(&down) {
                *xi += di;
            }
        }
        for (cache, tokens) in seqs.iter_mut() {
            cache.len += tokens.len();
        }
        let m = last_rows.len();
        let mut last = Vec::with_capacity(m * h);
        for &r in &last_rows {
            last.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        rms_norm(&mut last, &self.norm, self.eps);
        let logits = match &self.head {
            Some(head) => head.apply(&last, m),
            None => {
                // Tied: the embedding rows are the output rows.
                let by_row: Vec<Vec<f32>> = self
                    .embed
                    .par_chunks(h * 256)
                    .map(|rows| {
                        let mut out = Vec::with_capacity(rows.len() / h * m);
                        for e in rows.chunks(h) {
                            for s in 0..m {
                                out.push(dot(e, &last[s * h..(s + 1) * h]));
                            }
                        }
                        out
                    })
                    .collect();
                let mut out = vec![0.0f32; m * self.vocab];
                let mut v0 = 0;
                for block in by_row {
                    let count = block.len() / m;
                    for (i, val) in block.into_iter().enumerate() {
                        out[(i % m) * self.vocab + v0 + i / m] = val;
                    }
                    v0 += count;
                }
                out
            }
        };
        Ok(logits.chunks(self.vocab).map(<[f32]>::to_vec).collect())
    }
}
