#!/usr/bin/env python3
"""PyTorch baseline of `fathom model bench`: the same Qwen2 shape and
weights (read from the model directory), the same greedy generation with a
KV cache from the same prompt ids, the same forward+backward pass.

Usage: bench_model.py DIR GEN_TOKENS TRAIN_TOKENS REPEATS
Prints one JSON line like `fathom model bench`.
"""

import json
import os
import statistics
import sys
import time

import torch
from safetensors.torch import load_file


def load(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    w = {}
    for f in files:
        w.update(load_file(os.path.join(d, f)))
    for v in w.values():
        v.requires_grad_(True)
    return cfg, w


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class Qwen2:
    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w
        self.h = cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.h
        self.d = cfg["hidden_size"] // self.h
        inv = 1.0 / cfg.get("rope_theta", 10000.0) ** (torch.arange(0, self.d, 2).float() / self.d)
        f = torch.outer(torch.arange(4096).float(), inv)
        emb = torch.cat([f, f], -1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def rope(self, x, off):
        t = x.shape[-2]
        cos, sin = self.cos[off:off + t], self.sin[off:off + t]
        x1, x2 = x[..., : self.d // 2], x[..., self.d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, ids, off=0, cache=None):
        w, cfg, eps = self.w, self.cfg, self.cfg.get("rms_norm_eps", 1e-6)
        t = ids.shape[0]
        x = w["model.embed_tokens.weight"][ids]
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}"
            h = rms(x, w[f"{p}.input_layernorm.weight"], eps)
            lin = lambda n: h @ w[f"{p}.self_attn.{n}.weight"].T + w[f"{p}.self_attn.{n}.bias"]
            q = self.rope(lin("q_proj").view(t, self.h, self.d).transpose(0, 1), off)
            k = self.rope(lin("k_proj").view(t, self.kv, self.d).transpose(0, 1), off)
            v = lin("v_proj").view(t, self.kv, self.d).transpose(0, 1)
            if cache is not None:
                if l in cache:
                    k = torch.cat([cache[l][0], k], 1)
                    v = torch.cat([cache[l][1], v], 1)
                cache[l] = (k, v)
            k = k.repeat_interleave(self.h // self.kv, 0)
            v = v.repeat_interleave(self.h // self.kv, 0)
            s = q @ k.transpose(1, 2) / self.d ** 0.5
            if t > 1:
                s = s + torch.triu(torch.full((t, k.shape[1]), float("-inf")), 1 + off)
            a = torch.softmax(s, -1) @ v
            x = x + a.transpose(0, 1).reshape(t, -1) @ w[f"{p}.self_attn.o_proj.weight"].T
            h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
            x = x + (torch.nn.functional.silu(h @ w[f"{p}.mlp.gate_proj.weight"].T)
                     * (h @ w[f"{p}.mlp.up_proj.weight"].T)) @ w[f"{p}.mlp.down_proj.weight"].T
        x = rms(x, w["model.norm.weight"], eps)
        head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
        return x @ head.T


def main():
    d, gen, train, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    cfg, w = load(d)
    m = Qwen2(cfg, w)
    vocab = cfg["vocab_size"]
    ids = lambda n: torch.tensor([10 + (i * 37) % (vocab - 10) for i in range(n)])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            cache = {}
            logits = m.forward(ids(16), 0, cache)
            pos = 16
            for _ in range(gen):
                nxt = logits[-1].argmax().view(1)
                logits = m.forward(nxt, pos, cache)
                pos += 1
        rates.append(gen / (time.perf_counter() - t0))
    seq = ids(train + 1)
    train_rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = m.forward(seq[:-1])
        loss = torch.nn.functional.cross_entropy(logits, seq[1:])
        loss.backward()
        for v in w.values():
            v.grad = None
        train_rates.append(train / (time.perf_counter() - t0))
    print(json.dumps({"model": d, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "generate_tokens_per_s": statistics.median(rates),
                      "train_tokens_per_s": statistics.median(train_rates)}))


if __name__ == "__main__":
    main()
