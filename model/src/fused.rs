//! Fused CPU kernels with hand-written backward passes: causal attention
//! (grouped key/value heads, no repeated K/V, no `[heads, T, T]` tensor kept),
//! RMSNorm, rotary embedding, and the log-prob and entropy of sampled tokens
//! under a tempered softmax.
//!
//! Each is a candle custom op over contiguous f32 CPU tensors. The written-
//! out versions in [`crate::qwen2`] (small candle ops, every intermediate
//! kept) stay as the reference: tests compare values and gradients of both,
//! and models of other dtypes or devices use them ([`Kernels`]).
//!
//! Every kernel splits its work into tasks whose boundaries depend only on
//! the shapes, and sums inside a task in a fixed order, so results are the
//! same bit for bit whatever the thread count or scheduling.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

type Result<T> = candle_core::Result<T>;

/// Which implementation of the model's inner operations runs. Recorded with
/// each run: an episode replays bit for bit only with the kernels it was
/// sampled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// Written out of small candle operations (what logs recorded before
    /// fused kernels used, and what non-f32 or non-CPU models use).
    #[default]
    Reference,
    /// The fused kernels of this module (f32 on the CPU).
    Fused,
}

impl Kernels {
    /// What new runs use on `device` with `dtype`: fused where they exist.
    pub fn best_for(device: &Device, dtype: DType) -> Kernels {
        Kernels::best_on(device.is_cpu(), dtype)
    }

    /// [`Kernels::best_for`] from whether the device is the CPU, without
    /// opening it (the memory planner decides before any device exists).
    pub fn best_on(cpu: bool, dtype: DType) -> Kernels {
        if cpu && dtype == DType::F32 {
            Kernels::Fused
        } else {
            Kernels::Reference
        }
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fused {what}: expected f32 storage");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused {what}: expected a contiguous tensor");
    };
    Ok(&v[a..b])
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// `Σ a·b` with eight independent partial sums (which the compiler keeps
/// in one vector register) added in a fixed order.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a·x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

// ---------------------------------------------------------------------------
// Attention

/// Causal scaled-dot-product attention of `q: [b, heads, t, d]` over
/// `k, v: [b, kv_heads, s, d]`, where query `i` sits at position
/// `offset + i` and `s = offset + t` (the keys of a cache, then the new
/// ones). Query head `h` reads key/value head `h / (heads / kv_heads)`.
#[derive(Debug, Clone, Copy)]
pub struct CausalAttention {
    /// Position of the first query.
    pub offset: usize,
}

struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Shape, k: &Shape, v: &Shape, offset: usize) -> Result<Dims> {
        let (b, h, t, d) = q.dims4()?;
        let (kb, kv, s, kd) = k.dims4()?;
        if k.dims() != v.dims() || kb != b || kd != d || kv == 0 || h % kv != 0 || s != offset + t {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} with offset {offset} do not fit (k and v alike, heads a multiple of kv heads, keys = offset + queries)",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        Ok(Dims { b, h, kv, t, s, d })
    }
}

/// Softmax weights of query row `qi` (at position `pos`) over keys `0..=pos`
/// of `k` (`[s, d]`), into `p`; returns nothing (p sums to 1).
#[inline]
fn row_probs(qi: &[f32], k: &[f32], d: usize, pos: usize, scale: f32, p: &mut [f32]) {
    let mut m = f32::NEG_INFINITY;
    for j in 0..=pos {
        let sc = dot(qi, &k[j * d..(j + 1) * d]) * scale;
        p[j] = sc;
        m = m.max(sc);
    }
    let mut l = 0.0f32;
    for pj in p[..=pos].iter_mut() {
        *pj = (*pj - m).exp();
        l += *pj;
    }
    let inv = 1.0 / l;
    for pj in p[..=pos].iter_mut() {
        *pj *= inv;
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "fathom-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of(l1.shape(), l2.shape(), l3.shape(), self.offset)?;
        let (q, k, v) = (
            slice(s1, l1, "attention")?,
            slice(s2, l2, "attention")?,
            slice(s3, l3, "attention")?,
        );
        let Dims { h, kv, t, s, d, .. } = dims;
        let rep = h / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let offset = self.offset;
        let mut out = vec![0.0f32; q.len()];
        // One task per (batch row, key/value head): its query heads' outputs
        // are one contiguous block.
        out.par_chunks_mut(rep * t * d).enumerate().for_each(|(task, o)| {
            let (bi, g) = (task / kv, task % kv);
            let kb = &k[(bi * kv + g) * s * d..(bi * kv + g + 1) * s * d];
            let vb = &v[(bi * kv + g) * s * d..(bi * kv + g + 1) * s * d];
            let mut p = vec![0.0f32; s];
            for r in 0..rep {
                let head = bi * h + g * rep + r;
                for i in 0..t {
                    let qi = &q[(head * t + i) * d..(head * t + i + 1) * d];
                    let pos = offset + i;
                    row_probs(qi, kb, d, pos, scale, &mut p);
                    let oi = &mut o[(r * t + i) * d..(r * t + i + 1) * d];
                    for j in 0..=pos {
                        axpy(oi, p[j], &vb[j * d..(j + 1) * d]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of(q.shape(), k.shape(), v.shape(), self.offset)?;
        let Dims { b, h, kv, t, s, d } = dims;
        let (qv, kv_, vv, ov, gv) = (values(q)?, values(k)?, values(v)?, values(res)?, values(grad)?);
        let rep = h / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let offset = self.offset;
        let mut dq = vec![0.0f32; qv.len()];
        let mut dk = vec![0.0f32; kv_.len()];
        let mut dv = vec![0.0f32; vv.len()];
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
            .enumerate()
            .for_each(|(task, (dqb, (dkb, dvb)))| {
                let (bi, g) = (task / kv, task % kv);
                let kb = &kv_[(bi * kv + g) * s * d..(bi * kv + g + 1) * s * d];
                let vb = &vv[(bi * kv + g) * s * d..(bi * kv + g + 1) * s * d];
                let mut p = vec![0.0f32; s];
                for r in 0..rep {
                    let head = bi * h + g * rep + r;
                    for i in 0..t {
                        let row = (head * t + i) * d;
                        let qi = &qv[row..row + d];
                        let (oi, doi) = (&ov[row..row + d], &gv[row..row + d]);
                        let pos = offset + i;
                        row_probs(qi, kb, d, pos, scale, &mut p);
                        let di = dot(doi, oi);
                        let dqi = &mut dqb[(r * t + i) * d..(r * t + i + 1) * d];
                        for j in 0..=pos {
                            let (kj, vj) = (&kb[j * d..(j + 1) * d], &vb[j * d..(j + 1) * d]);
                            let dp = dot(doi, vj);
                            let ds = p[j] * (dp - di) * scale;
                            axpy(dqi, ds, kj);
                            axpy(&mut dkb[j * d..(j + 1) * d], ds, qi);
                            axpy(&mut dvb[j * d..(j + 1) * d], p[j], doi);
                        }
                    }
                }
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, kv, s, d), dev)?),
            Some(Tensor::from_vec(dv, (b, kv, s, d), dev)?),
        ))
    }
}

/// Causal attention (see [`CausalAttention`]); the inputs are made contiguous.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, CausalAttention { offset })
}

// ---------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    /// Added to the mean square.
    pub eps: f32,
}

/// Rows per task of the RMSNorm weight gradient: fixed, so the sum over
/// rows is done in the same order whatever the thread count.
const ROWS_PER_TASK: usize = 64;

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fathom-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "rms norm")?, slice(s2, l2, "rms norm")?);
        let n = w.len();
        if n == 0 || x.len() % n != 0 || l1.shape().dims().last() != Some(&n) {
            candle_core::bail!(
                "fused rms norm: x {:?} and weight {:?} do not fit",
                l1.shape(),
                l2.shape()
            );
        }
        let eps = self.eps;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_mut(n).zip(xb.chunks(n)) {
                    let r = 1.0 / (dot(xr, xr) / n as f32 + eps).sqrt();
                    for ((yi, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
                        *yi = xi * r * wi;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, gv) = (values(x)?, values(w)?, values(grad)?);
        let n = wv.len();
        let eps = self.eps;
        let mut dx = vec![0.0f32; xv.len()];
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(n * ROWS_PER_TASK)
            .zip(xv.par_chunks(n * ROWS_PER_TASK).zip(gv.par_chunks(n * ROWS_PER_TASK)))
            .map(|(dxb, (xb, gb))| {
                let mut dw = vec![0.0f32; n];
                for ((dxr, xr), gr) in dxb.chunks_mut(n).zip(xb.chunks(n)).zip(gb.chunks(n)) {
                    let r = 1.0 / (dot(xr, xr) / n as f32 + eps).sqrt();
                    // g = dy·w; dx = r·g − x·r³·(g·x)/n; dw += dy·x·r.
                    let mut gx = 0.0f32;
                    for i in 0..n {
                        gx += gr[i] * wv[i] * xr[i];
                    }
                    let c = r * r * r * gx / n as f32;
                    for i in 0..n {
                        dxr[i] = r * gr[i] * wv[i] - xr[i] * c;
                        dw[i] += gr[i] * xr[i] * r;
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0.0f32; n];
        for p in &partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// RMSNorm of `x` with weight `w` (see [`RmsNorm`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------
// Rotary embedding

/// `x·cos + rotate_half(x)·sin` for `x: [b, heads, t, d]`, with the
/// tables' rows for the `t` positions (`[t, d]` each).
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    d: usize,
}

impl Rotary {
    fn apply(&self, x: &[f32], inverse: bool) -> Vec<f32> {
        let (d, half) = (self.d, self.d / 2);
        let t = self.cos.len() / d;
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).for_each(|(ob, xb)| {
            for i in 0..t {
                let (c, s) = (&self.cos[i * d..(i + 1) * d], &self.sin[i * d..(i + 1) * d]);
                let (xr, or) = (&xb[i * d..(i + 1) * d], &mut ob[i * d..(i + 1) * d]);
                for a in 0..half {
                    if inverse {
                        // The transpose: dx_a = dy_a c_a + dy_{a+h} s_{a+h};
                        // dx_{a+h} = dy_{a+h} c_{a+h} − dy_a s_a.
                        or[a] = xr[a] * c[a] + xr[a + half] * s[a + half];
                        or[a + half] = xr[a + half] * c[a + half] - xr[a] * s[a];
                    } else {
                        or[a] = xr[a] * c[a] - xr[a + half] * s[a];
                        or[a + half] = xr[a + half] * c[a + half] + xr[a] * s[a + half];
                    }
                }
            }
        });
        out
    }
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "fathom-rotary"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rotary")?;
        let (_, _, t, d) = l1.shape().dims4()?;
        if d != self.d || t * d != self.cos.len() {
            candle_core::bail!("fused rotary: x {:?} does not fit the tables", l1.shape());
        }
        Ok((CpuStorage::F32(self.apply(x, false)), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = values(grad)?;
        Ok(Some(Tensor::from_vec(self.apply(&g, true), x.shape(), x.device())?))
    }
}

/// Rotary embedding of `x: [b, heads, t, d]` with `cos`, `sin`: `[t, d]`.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(3)?;
    x.contiguous()?.apply_op1(Rotary {
        cos: values(cos)?,
        sin: values(sin)?,
        d,
    })
}

// ---------------------------------------------------------------------------
// Log-probs and entropy

/// For logits `[n, vocab]` and target ids `[n]` (u32): `[n, 2]` holding each
/// row's log-prob of its target and the entropy of its distribution, both
/// under `softmax(logits / temperature)`.
#[derive(Debug, Clone, Copy)]
pub struct TakenLogProb {
    /// The softmax temperature (above 0).
    pub temperature: f32,
}

impl TakenLogProb {
    /// Per row: `(z, lse)` with `z = logits / temperature`.
    fn lse(&self, row: &[f32]) -> f32 {
        let inv = 1.0 / self.temperature;
        let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * inv));
        let sum: f32 = row.iter().map(|&x| (x * inv - m).exp()).sum();
        m + sum.ln()
    }
}

fn targets(s: &CpuStorage, l: &Layout) -> Result<Vec<u32>> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("fused log-prob: targets must be u32");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused log-prob: targets must be contiguous");
    };
    Ok(v[a..b].to_vec())
}

impl CustomOp2 for TakenLogProb {
    fn name(&self) -> &'static str {
        "fathom-taken-log-prob"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = slice(s1, l1, "log-prob")?;
        let ids = targets(s2, l2)?;
        let (n, vocab) = l1.shape().dims2()?;
        if ids.len() != n || ids.iter().any(|&i| i as usize >= vocab) {
            candle_core::bail!("fused log-prob: {} targets (all below {vocab}) expected", n);
        }
        let inv = 1.0 / self.temperature;
        let mut out = vec![0.0f32; 2 * n];
        out.par_chunks_mut(2).enumerate().for_each(|(r, o)| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let lse = self.lse(row);
            // H = lse − Σ p z.
            let mut pz = 0.0f32;
            for &x in row {
                let z = x * inv;
                pz += (z - lse).exp() * z;
            }
            o[0] = row[ids[r] as usize] * inv - lse;
            o[1] = lse - pz;
        });
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (lv, iv) = (values(logits)?, ids.contiguous()?.to_vec1::<u32>()?);
        let (rv, gv) = (values(res)?, values(grad)?);
        let (n, vocab) = logits.dims2()?;
        let inv = 1.0 / self.temperature;
        let mut dl = vec![0.0f32; lv.len()];
        dl.par_chunks_mut(vocab).enumerate().for_each(|(r, dr)| {
            let row = &lv[r * vocab..(r + 1) * vocab];
            let (g_lp, g_h) = (gv[2 * r], gv[2 * r + 1]);
            let (lp, h) = (rv[2 * r], rv[2 * r + 1]);
            let lse = row[iv[r] as usize] * inv - lp;
            // d logp_y/dz_j = δ_jy − p_j; dH/dz_j = −p_j (log p_j + H).
            for (j, (&x, dj)) in row.iter().zip(dr.iter_mut()).enumerate() {
                let logp = x * inv - lse;
                let p = logp.exp();
                let onehot = if j == iv[r] as usize { 1.0 } else { 0.0 };
                *dj = (g_lp * (onehot - p) - g_h * p * (logp + h)) * inv;
            }
        });
        let _ = n;
        Ok((Some(Tensor::from_vec(dl, logits.shape(), logits.device())?), None))
    }
}

/// The log-probs of `targets` and the entropies, `([n], [n])`, of
/// `logits: [n, vocab]` at `temperature` (see [`TakenLogProb`]).
pub fn taken_logprob_and_entropy(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    let both = logits.contiguous()?.apply_op2(
        &targets.contiguous()?,
        TakenLogProb {
            temperature: temperature as f32,
        },
    )?;
    Ok((both.narrow(1, 0, 1)?.squeeze(1)?, both.narrow(1, 1, 1)?.squeeze(1)?))
}
