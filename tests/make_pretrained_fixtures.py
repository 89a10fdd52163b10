"""Writes tests/fixtures/pretrained/: tiny RANDOM checkpoints saved by HF transformers, with the
logits transformers computes for them (the reference a loader of HF checkpoints is checked against).

    .venv/bin/python tests/make_pretrained_fixtures.py

Needs torch + transformers (the bench extra); the tests that read the fixtures need neither and
download nothing. Every model is built from a fixed torch.manual_seed, on one thread, so a rerun
with the same torch/transformers writes the same bytes (`git diff --stat` stays empty).

Each folder <name>/ holds what save_pretrained(folder, safe_serialization=True) writes
(config.json, generation_config.json, model.safetensors or model-0000k-of-0000n.safetensors +
model.safetensors.index.json) and reference.json:
    {"input_ids": [[...]], "logits": [[[...]]] (float32 values written as float(x), exact),
     "transformers": version, "torch": version, "note": "..."}
JSON, not pickle/npy: reading the reference runs no code.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

try:
    from transformers import MistralConfig, MistralForCausalLM
except ImportError:  # older/newer transformers without Mistral: that fixture is skipped
    MistralConfig = MistralForCausalLM = None

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pretrained")
ATTN = "eager"  # the plain softmax(QK^T/sqrt(d))V path: the math a from-scratch loader implements

# Weights from a plain N(0, 0.02) init give logits of ~1e-2, too flat for a loader test to tell
# right from wrong; 0.15 gives logits of order 1.
INIT = 0.15


def randomise_norms_and_biases(model, seed):
    """Norm weights ~ U(0.5, 1.5), norm and linear biases ~ N(0, 0.1): transformers initialises
    them to ones/zeros, which a loader that ignores them would reproduce by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(k in name for k in ("ln_", "norm"))
            if is_norm and leaf == "weight":
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def input_ids(vocab, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, cols), generator=g)


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids).logits.float()


def exact(t):
    """Nested lists of Python floats: float(x) of a float32 is exact, and json writes its repr."""
    return t.float().tolist()


def write_reference(folder, ids, logits, note):
    ref = {"input_ids": ids.tolist(), "logits": exact(logits), "transformers": transformers.__version__,
           "torch": torch.__version__, "note": note}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")


def save(model, name, **kw):
    folder = os.path.join(OUT, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True, **kw)
    return folder


def reload(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=ATTN)


def check_roundtrip(folder, ids, logits):
    """What reference.json stores is what transformers computes from the files on disk."""
    again = logits_of(reload(folder), ids)
    assert torch.equal(again, logits), f"{folder}: reloaded model gives other logits"


def build(model_cls, config, seed):
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    randomise_norms_and_biases(model, seed + 1)
    return model.eval()


NOTE = ("Random tiny model (torch.manual_seed {seed}) saved by transformers save_pretrained; "
        "logits = transformers {tf} (torch {pt}, float32, eval, no_grad, attn_implementation='eager') "
        "for input_ids. {extra}")


def note(seed, extra=""):
    return NOTE.format(seed=seed, tf=transformers.__version__, pt=torch.__version__, extra=extra).strip()


def fixture(name, model, ids, seed, extra="", **save_kw):
    folder = save(model, name, **save_kw)
    logits = logits_of(model, ids)
    check_roundtrip(folder, ids, logits)
    write_reference(folder, ids, logits, note(seed, extra))
    print(f"{name}: logits {tuple(logits.shape)}, std {logits.std().item():.3f}")
    return logits


def llama_config(**kw):
    base = dict(vocab_size=128, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                intermediate_size=100, num_hidden_layers=2, rms_norm_eps=1e-6, rope_theta=5000.0,
                tie_word_embeddings=False, max_position_embeddings=64, initializer_range=INIT,
                attn_implementation=ATTN)
    base.update(kw)
    return LlamaConfig(**base)


def main():
    torch.set_num_threads(1)  # same reduction order every run (and the machine's cores are shared)
    os.makedirs(OUT, exist_ok=True)

    # GPT-2: Conv1D weights stored (in, out), fused c_attn, learned positions, tied lm_head.
    seed = 1101
    cfg = GPT2Config(vocab_size=101, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, initializer_range=INIT,
                     bos_token_id=100, eos_token_id=100,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=ATTN)
    fixture("gpt2-tiny", build(GPT2LMHeadModel, cfg, seed), input_ids(101, 2, 9, seed), seed,
            "LayerNorm weights/biases and all linear biases randomised after init.")

    # Llama: GQA (6 query heads, 2 KV heads), SwiGLU with intermediate 100, untied lm_head.
    seed = 1201
    llama = build(LlamaForCausalLM, llama_config(), seed)
    llama_ids = input_ids(128, 2, 11, seed)
    fixture("llama-tiny", llama, llama_ids, seed, "RMSNorm weights randomised after init.")

    # head_dim 16 x 4 heads = 64 != hidden 48; tied embeddings.
    seed = 1301
    cfg = llama_config(num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    fixture("llama-tiny-headdim", build(LlamaForCausalLM, cfg, seed), input_ids(128, 2, 10, seed), seed,
            "head_dim * num_attention_heads (64) != hidden_size (48); tied lm_head; "
            "RMSNorm weights randomised after init.")

    # The llama-tiny weights in bfloat16, sharded (3+ files + model.safetensors.index.json).
    name = "llama-tiny-bf16-sharded"
    folder = save(llama.to(torch.bfloat16), name, max_shard_size="40KB")
    shards = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert len(shards) >= 3 and os.path.exists(os.path.join(folder, "model.safetensors.index.json")), shards
    logits = logits_of(reload(folder), llama_ids)
    write_reference(folder, llama_ids, logits, note(1201, (
        "Weights = llama-tiny's converted to bfloat16 and saved sharded; the logits are computed by "
        "transformers from these bf16 weights upcast to float32 (from_pretrained(dtype=torch.float32)), "
        "so they are not llama-tiny's logits.")))
    print(f"{name}: {len(shards)} shards, logits {tuple(logits.shape)}")

    # Llama 3 rope scaling: 40 positions > original_max_position_embeddings 16.
    seed = 1401
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    common = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=500000.0)
    model = build(LlamaForCausalLM, llama_config(**common, rope_scaling=scaling), seed)
    ids = input_ids(96, 1, 40, seed)
    logits = fixture("llama3-tiny-rope-scaling", model, ids, seed,
                     "rope_scaling llama3 (factor 8, low 1, high 4, original 16) over 40 positions; "
                     "RMSNorm weights randomised after init.")
    plain = LlamaForCausalLM(llama_config(**common)).eval()
    plain.load_state_dict(model.state_dict())
    diff = (logits_of(plain, ids) - logits).abs().max().item()
    assert diff > 1e-2, f"rope scaling changes the logits by only {diff}"
    print(f"  without rope_scaling the logits move by up to {diff:.3f}")

    # Qwen2: q/k/v biases (randomised), no o_proj bias, tied embeddings.
    seed = 1501
    cfg = Qwen2Config(vocab_size=112, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=72, num_hidden_layers=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=True, max_position_embeddings=64, initializer_range=INIT,
                      use_sliding_window=False, attn_implementation=ATTN)
    model = build(Qwen2ForCausalLM, cfg, seed)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert model.model.layers[0].self_attn.o_proj.bias is None
    fixture("qwen2-tiny", model, input_ids(112, 2, 8, seed), seed,
            "q/k/v biases and RMSNorm weights randomised after init.")

    # Mistral: one KV head (multi-query), no sliding window.
    if MistralForCausalLM is not None:
        seed = 1601
        cfg = MistralConfig(vocab_size=100, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                            head_dim=8, intermediate_size=64, num_hidden_layers=2, rms_norm_eps=1e-5,
                            rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False,
                            max_position_embeddings=64, initializer_range=INIT, attn_implementation=ATTN)
        fixture("mistral-tiny", build(MistralForCausalLM, cfg, seed), input_ids(100, 2, 7, seed), seed,
                "1 KV head; sliding_window null; RMSNorm weights randomised after init.")
    else:
        print("mistral-tiny: this transformers has no MistralForCausalLM, skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
