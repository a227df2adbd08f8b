#!/usr/bin/env python3
"""Model-loading interop check, written independently of fathom's Rust code.

1. `fixture OUT`: writes a Qwen2 model directory the way Hugging Face tools
   do, with the Python `safetensors` and `tokenizers` packages: a byte-level
   BPE tokenizer.json, config.json (untied output projection, grouped-query
   attention), weights sharded over two files with model.safetensors.index.json.
2. `reference DIR OUT.json`: computes logits for a fixed input with a plain
   numpy (float64) Qwen2 forward pass over DIR's weights, for
   `fathom model check DIR --reference OUT.json`.
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

TEXT = "Who founded the museum in the capital? The river flows through 1820."


def fixture(out):
    os.makedirs(out, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=1,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [TEXT, "The king built a bridge over the river.", "A novel by the author, 1901."] * 50
    tok.train_from_iterator(corpus, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    cfg = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
        "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    rng = np.random.default_rng(1234)
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    w = {"model.embed_tokens.weight": rng.normal(0, 0.1, (vocab, h)),
         "model.norm.weight": 1 + rng.normal(0, 0.1, h),
         "lm_head.weight": rng.normal(0, 0.1, (vocab, h))}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        w[f"{p}.self_attn.q_proj.weight"] = rng.normal(0, 0.1, (h, h))
        w[f"{p}.self_attn.q_proj.bias"] = rng.normal(0, 0.1, h)
        for n in ("k_proj", "v_proj"):
            w[f"{p}.self_attn.{n}.weight"] = rng.normal(0, 0.1, (kv, h))
            w[f"{p}.self_attn.{n}.bias"] = rng.normal(0, 0.1, kv)
        w[f"{p}.self_attn.o_proj.weight"] = rng.normal(0, 0.1, (h, h))
        w[f"{p}.mlp.gate_proj.weight"] = rng.normal(0, 0.1, (i, h))
        w[f"{p}.mlp.up_proj.weight"] = rng.normal(0, 0.1, (i, h))
        w[f"{p}.mlp.down_proj.weight"] = rng.normal(0, 0.1, (h, i))
        w[f"{p}.input_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
        w[f"{p}.post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    names = sorted(w)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for n, part in enumerate(shards):
        fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: w[k] for k in part}, os.path.join(out, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.nbytes for v in w.values())}, "weight_map": weight_map}, f, indent=2)


def load_weights(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for f in files:
        w.update({k: v.astype(np.float64) for k, v in load_file(os.path.join(d, f)).items()})
    return w


def rms(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope(x, theta):
    t, dim = x.shape[1], x.shape[2]
    inv = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    freqs = np.outer(np.arange(t), inv)
    emb = np.concatenate([freqs, freqs], -1)
    rotated = np.concatenate([-x[..., dim // 2:], x[..., : dim // 2]], -1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def forward(d, ids):
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = load_weights(d)
    heads = cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads") or heads
    hd = cfg["hidden_size"] // heads
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    t = len(ids)
    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        h = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        proj = lambda n: h @ w[f"{p}.self_attn.{n}.weight"].T + w[f"{p}.self_attn.{n}.bias"]
        q = proj("q_proj").reshape(t, heads, hd).transpose(1, 0, 2)
        k = proj("k_proj").reshape(t, kvh, hd).transpose(1, 0, 2)
        v = proj("v_proj").reshape(t, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q, theta), rope(k, theta)
        k, v = np.repeat(k, heads // kvh, axis=0), np.repeat(v, heads // kvh, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(1, 0, 2).reshape(t, heads * hd) @ w[f"{p}.self_attn.o_proj.weight"].T
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        g = h @ w[f"{p}.mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[f"{p}.mlp.up_proj.weight"].T)) @ w[f"{p}.mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def reference(d, out):
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    logits = forward(d, np.array(ids))
    with open(out, "w") as f:
        json.dump({"input_ids": ids, "logits": logits.tolist(), "atol": 2e-4,
                   "text": TEXT, "text_ids": ids}, f)


if __name__ == "__main__":
    if sys.argv[1] == "fixture":
        fixture(sys.argv[2])
    elif sys.argv[1] == "reference":
        reference(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: hf_fixture.py fixture OUT | reference DIR OUT.json")
