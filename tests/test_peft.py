"""Parameter-efficient fine-tuning: LoRA, bottleneck adapters and soft prompts on our GPTs.

A wrapped model starts as its base exactly; merging is exact to float64 rounding and unmerging
bit for bit; training changes only what the method adds; adapter folders round-trip; and, with
peft + transformers installed, PEFT reads our adapters on the HF checkpoint of the same base and
gives our logits, and we read PEFT's and give its logits."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.peft import (BottleneckAdapter, BottleneckConfig, LoraConfig, LoraLinear, PeftModel,
                              PromptTuningConfig, SoftPrompt, get_peft_model)
from tinygrad_lm.peft.files import CONFIG_NAME, WEIGHTS_NAME

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
HAVE_PEFT = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))
needs_peft = pytest.mark.skipif(not HAVE_PEFT, reason="needs torch, transformers and peft (the references)")

GPT2_LIKE = dict(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=32)
LLAMA_LIKE = dict(vocab_size=61, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope",
                  norm="rmsnorm", mlp="swiglu", bias=False, tie_weights=False)
CONFIGS = {"gpt2": GPT2_LIKE, "llama": LLAMA_LIKE}
METHODS = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    "lora-attn": lambda: LoraConfig(r=2, target_modules=("c_attn",), use_rslora=True),
    "adapter": lambda: BottleneckConfig(reduction_factor=8),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="SAMPLE_VOCAB"),
}


def model_of(family, seed=0, dtype=np.float64):
    tg.manual_seed(seed)
    return GPT(GPTConfig(**CONFIGS[family])).to(dtype=dtype)


def ids_of(shape=(2, 9), seed=1):
    return np.random.default_rng(seed).integers(0, 61, shape)


def logits(model, ids):
    return model(ids, all_logits=True)[0].data.copy()


def perturb(peft, seed=2):
    """Nonzero adapter weights (they start at zero on purpose), so the tests below test something."""
    rng = np.random.default_rng(seed)
    for _, p in peft.named_parameters():
        if p.requires_grad:
            p.data = p.data + rng.standard_normal(p.shape).astype(p.dtype) * 0.1


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("method", METHODS)
def test_starts_as_its_base_exactly(family, method):
    base = model_of(family)
    ids = ids_of()
    want = logits(base, ids)
    if method == "prompt":   # a soft prompt adds context, so the check is: off, it is the base again
        peft = get_peft_model(base, METHODS[method]())
        with peft.disable_adapter():
            assert np.array_equal(logits(peft, ids), want)
        return
    peft = get_peft_model(base, METHODS[method]())
    assert np.array_equal(logits(peft, ids), want)


@pytest.mark.parametrize("family", CONFIGS)
def test_merge_is_exact_and_unmerge_bit_for_bit(family):
    peft = get_peft_model(model_of(family), LoraConfig(r=3, target_modules="all-linear"))
    perturb(peft)
    ids = ids_of()
    y = logits(peft, ids)
    before = {n: p.data.copy() for n, p in peft.named_parameters()}
    peft.merge()
    np.testing.assert_allclose(logits(peft, ids), y, rtol=0, atol=1e-10)
    peft.unmerge()
    assert all(np.array_equal(before[n], p.data) for n, p in peft.named_parameters())
    merged = peft.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())   # as before get_peft_model
    np.testing.assert_allclose(logits(merged, ids), y, rtol=0, atol=1e-10)


def test_disable_adapter_takes_out_a_merged_lora_and_puts_it_back():
    base = model_of("gpt2")
    ids = ids_of()
    want = logits(base, ids)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    perturb(peft)
    peft.merge()
    y = logits(peft, ids)
    with peft.disable_adapter():
        np.testing.assert_allclose(logits(peft, ids), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits(peft, ids), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_training_changes_only_what_the_method_adds(method):
    peft = get_peft_model(model_of("llama", dtype=np.float32), METHODS[method]())
    frozen = {n: p.data.copy() for n, p in peft.named_parameters() if not p.requires_grad}
    trained = {n: p.data.copy() for n, p in peft.named_parameters() if p.requires_grad}
    opt = peft.configure_optimizers(0.1, 1e-2)
    ids = ids_of((3, 12))
    for _ in range(3):
        _, loss = peft(ids, ids)
        loss.backward()
        assert all(p.grad is None for p in peft.parameters() if not p.requires_grad)
        opt.step()
        opt.zero_grad()
    params = dict(peft.named_parameters())
    assert all(np.array_equal(params[n].data, a) for n, a in frozen.items())     # bit for bit
    assert all(not np.array_equal(params[n].data, a) for n, a in trained.items())
    if method == "prompt":
        assert list(trained) == ["base_model.model.soft_prompt.weight"]


def test_counts_and_parameter_names_follow_peft():
    peft = get_peft_model(model_of("gpt2"), LoraConfig(r=4, target_modules=("c_attn",)))
    t, n = peft.get_nb_trainable_parameters()
    assert t == peft.num_parameters(trainable=True) == 2 * 4 * (32 + 96)   # A (4, 32) + B (96, 4) per block
    assert n == peft.num_parameters()
    names = [k for k in peft.state_dict() if "h.0.attn.c_attn" in k]
    assert names == ["base_model.model.transformer.h.0.attn.c_attn.base_layer.weight",
                     "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias",
                     "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
                     "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert peft.config is peft.model.config and peft.generate is not None   # used like its base


def test_lora_bias_modes():
    all_b = get_peft_model(model_of("gpt2"), LoraConfig(r=2, target_modules=("c_fc",), bias="all"))
    assert {n.split(".")[-1] for n, p in all_b.named_parameters() if p.requires_grad} == {"weight", "bias"}
    assert sum(p.requires_grad and n.endswith(".bias") for n, p in all_b.named_parameters()) > 4
    only = get_peft_model(model_of("gpt2"), LoraConfig(r=2, target_modules=("c_fc",), bias="lora_only"))
    biases = [n for n, p in only.named_parameters() if p.requires_grad and n.endswith(".bias")]
    assert biases == [f"base_model.model.transformer.h.{i}.mlp.c_fc.base_layer.bias" for i in range(2)]


def test_a_frozen_linear_computes_no_weight_gradient_and_keeps_no_input():
    from tinygrad_lm.ops.nn import Linear as LinearOp
    x = tg.randn(5, 4, requires_grad=True)
    w = tg.randn(3, 4)                                 # frozen
    y = LinearOp.apply(x, w)
    assert y._ctx.x is None                            # x is not kept for a weight gradient never needed
    y.sum().backward()
    assert w.grad is None and x.grad.shape == (5, 4)


# ---- soft prompts ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", CONFIGS)
def test_soft_prompt_is_context_before_the_tokens(family):
    base = model_of(family)
    peft = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=3))
    ids = ids_of((2, 6))
    P = peft.soft_prompt.weight.data
    y = logits(peft, ids)
    assert y.shape == (2, 6, 61)                        # logits of the real tokens only
    # the same as feeding the base the prompt's embeddings followed by the tokens' (by hand)
    from tinygrad_lm.tensor import Tensor
    base.soft_prompt = None
    fake = SoftPrompt(P.copy())
    base.soft_prompt = fake
    np.testing.assert_array_equal(logits(base, ids), y)
    assert isinstance(fake.forward(2), Tensor) and fake.forward(2).shape == (2, 3, 32)
    # the loss ignores the virtual positions: targets have the real tokens' shape
    _, loss = peft(ids, ids)
    assert np.isfinite(loss.item())


@pytest.mark.parametrize("family", CONFIGS)
def test_soft_prompt_generation_with_and_without_the_cache(family):
    peft = get_peft_model(model_of(family), PromptTuningConfig(num_virtual_tokens=4))
    perturb(peft)
    prompt = ids_of((1, 5))
    a = peft.generate(prompt, 30, temperature=0, use_cache=True).data     # past the 24-position window
    b = peft.generate(prompt, 30, temperature=0, use_cache=False).data
    np.testing.assert_array_equal(a, b)


def test_soft_prompt_init_from_text():
    from tinygrad_lm.tokenizers import ByteTokenizer
    base = model_of("gpt2")
    tok = ByteTokenizer()
    tg.manual_seed(0)
    base_big = GPT(GPTConfig(**{**GPT2_LIKE, "vocab_size": tok.vocab_size})).double()
    peft = get_peft_model(base_big, PromptTuningConfig(num_virtual_tokens=5, prompt_tuning_init="TEXT",
                                                       prompt_tuning_init_text="ab"), tokenizer=tok)
    ids = list(tok.encode("ab")) * 3
    np.testing.assert_array_equal(peft.soft_prompt.weight.data, base_big.transformer.wte.weight.data[ids[:5]])
    with pytest.raises(ValueError, match="tokenizer"):
        get_peft_model(base, PromptTuningConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text="x"))


# ---- bottleneck adapters ------------------------------------------------------------------------

def test_adapters_sit_after_attention_and_mlp():
    peft = get_peft_model(model_of("gpt2"), BottleneckConfig(reduction_factor=8, non_linearity="gelu"))
    block = peft.model.transformer.h[0]
    assert isinstance(block.attn.adapter, BottleneckAdapter) and isinstance(block.mlp.adapter, BottleneckAdapter)
    assert block.attn.adapter.down.weight.shape == (4, 32)          # 32 // 8 units
    assert not block.attn.adapter.up.weight.data.any()               # zero: identity at the start
    assert peft.num_parameters(trainable=True) == 2 * 2 * (32 * 4 + 4 + 4 * 32 + 32)


# ---- gradient checks of the new layers ------------------------------------------------------------

def with_params(module, names, fn):
    """fn over the module with gradcheck's float64 copies put in place of its parameters ``names``
    (gradcheck perturbs its own copies: a closure that ignored them would check nothing)."""
    def run(x, *params):
        for name, p in zip(names, params):
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, p)
        return fn(x)
    return run, [dict(module.named_parameters())[n] for n in names]


def test_gradcheck_lora_linear():
    tg.manual_seed(0)
    layer = LoraLinear(tg.nn.Linear(5, 7).double(), r=3, scale=0.7)
    layer.lora_B.weight.data = np.random.default_rng(0).standard_normal((7, 3))
    layer.double()
    x = tg.tensor(np.random.default_rng(1).standard_normal((2, 4, 5)), requires_grad=True)
    fn, params = with_params(layer, ["lora_A.weight", "lora_B.weight"], layer)
    assert tg.gradcheck(fn, [x, *params])


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "tanh"])
def test_gradcheck_bottleneck_adapter(act):
    tg.manual_seed(0)
    ad = BottleneckAdapter(8, reduction_factor=2, non_linearity=act).double()
    ad.up.weight.data = np.random.default_rng(0).standard_normal((8, 4))
    x = tg.tensor(np.random.default_rng(1).standard_normal((3, 8)) + 0.05, requires_grad=True)
    fn, params = with_params(ad, ["down.weight", "down.bias", "up.weight", "up.bias"], ad)
    assert tg.gradcheck(fn, [x, *params])


def test_gradcheck_soft_prompt_through_a_model():
    peft = get_peft_model(model_of("llama"), PromptTuningConfig(num_virtual_tokens=2))
    ids = ids_of((2, 4))
    fn, params = with_params(peft.model, ["soft_prompt.weight"], lambda _: peft(ids, ids)[1])
    assert tg.gradcheck(fn, [tg.tensor(np.zeros(1)), *params])


def test_the_parameter_checks_see_the_parameters():
    """A term of lora_B's weight that backward cannot see (detached) makes the check fail: the
    checks above perturb the parameters the layer really uses."""
    from tinygrad_lm.gradcheck import GradcheckError
    tg.manual_seed(0)
    layer = LoraLinear(tg.nn.Linear(4, 3).double(), r=2, scale=0.5).double()
    x = tg.tensor(np.random.default_rng(1).standard_normal((2, 4)), requires_grad=True)
    fn, params = with_params(layer, ["lora_B.weight"], layer)
    with pytest.raises(GradcheckError):
        tg.gradcheck(lambda x, b: fn(x, b) + b.detach().sum(), [x, *params])


# ---- files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("method", METHODS)
def test_adapter_files_round_trip(tmp_path, family, method):
    peft = get_peft_model(model_of(family), METHODS[method]())
    perturb(peft)
    ids = ids_of()
    want = logits(peft, ids)
    peft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["peft_type"] == peft.peft_config.peft_type and saved["task_type"] == "CAUSAL_LM"
    back = PeftModel.from_pretrained(model_of(family), tmp_path)
    np.testing.assert_allclose(logits(back, ids), want, rtol=1e-6, atol=1e-6)   # float32 on disk
    assert back.num_parameters(trainable=True) == 0 and not back.training
    trainable = PeftModel.from_pretrained(model_of(family), tmp_path, is_trainable=True)
    assert trainable.num_parameters(trainable=True) == peft.num_parameters(trainable=True)


def test_lora_file_names_follow_the_hf_export(tmp_path):
    from tinygrad_lm.hub.safetensors_file import read_safetensors
    for family, want in (("gpt2", "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"),
                         ("llama", "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")):
        get_peft_model(model_of(family), LoraConfig(r=2, target_modules="all-linear")).save_pretrained(tmp_path / family)
        names = read_safetensors(tmp_path / family / WEIGHTS_NAME)
        assert want in names
        assert not any("base_layer" in n for n in names)     # never the base weights
    assert names["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (16, 2)  # 2 kv heads x 8


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="matched no Linear layer.*c_attn"):
        get_peft_model(model_of("llama"), LoraConfig(target_modules=("q_proj", "v_proj")))
    with pytest.raises(ValueError, match="tie_weights"):
        get_peft_model(model_of("gpt2"), LoraConfig(target_modules=("lm_head",)))
    peft = get_peft_model(model_of("gpt2"), LoraConfig())
    with pytest.raises(ValueError, match="already has an adapter"):
        get_peft_model(peft, LoraConfig())
    with pytest.raises(ValueError, match="r must be a positive integer"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        LoraConfig(lora_dropout=1.5)
    with pytest.raises(ValueError, match="only LoRA"):
        get_peft_model(model_of("gpt2"), BottleneckConfig()).merge()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        PeftModel.from_pretrained(model_of("gpt2"), tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"peft_type": "IA3", "task_type": "CAUSAL_LM"}')
    with pytest.raises(ValueError, match="IA3"):
        PeftModel.from_pretrained(model_of("gpt2"), tmp_path)
    peft.save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="shape"):   # an adapter for another model
        PeftModel.from_pretrained(GPT(GPTConfig(**{**GPT2_LIKE, "n_embd": 16})), tmp_path / "a")


# ---- against Hugging Face PEFT ----------------------------------------------------------------

def _hf_logits(folder, adapter, ids):
    import torch
    from peft import PeftModel as HFPeft
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    hf = HFPeft.from_pretrained(hf, adapter).eval()
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids)).logits.numpy()


@needs_peft
@pytest.mark.parametrize("fixture", ["gpt2-tiny", "llama-tiny", "qwen2-tiny"])
@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_peft_reads_our_adapter_and_gives_our_logits(tmp_path, fixture, method):
    base = GPT.from_pretrained(FIXTURES / fixture)
    config = (LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if method == "lora"
              else PromptTuningConfig(num_virtual_tokens=3))
    peft = get_peft_model(base, config)
    perturb(peft)
    ids = ids_of((2, 7), seed=3) % base.config.vocab_size
    ours = logits(peft, ids)
    peft.save_pretrained(tmp_path)
    theirs = _hf_logits(FIXTURES / fixture, tmp_path, ids)
    if method == "prompt":
        theirs = theirs[:, 3:]                          # PEFT returns the virtual positions' logits too
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@needs_peft
@pytest.mark.parametrize("fixture, targets", [("gpt2-tiny", ["c_attn", "c_fc"]),
                                               ("llama-tiny", ["q_proj", "v_proj", "down_proj"])])
def test_we_read_peft_adapters_and_give_their_logits(tmp_path, fixture, targets):
    import torch
    from peft import LoraConfig as HFLoraConfig
    from peft import get_peft_model as hf_get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(FIXTURES / fixture, torch_dtype=torch.float32)
    hf = hf_get_peft_model(hf, HFLoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False,
                                             rank_pattern={targets[-1]: 2}))
    hf.save_pretrained(tmp_path)
    ids = ids_of((2, 7), seed=4) % hf.config.vocab_size
    with torch.no_grad():
        want = hf.eval()(input_ids=torch.tensor(ids)).logits.numpy()
    ours = PeftModel.from_pretrained(GPT.from_pretrained(FIXTURES / fixture), tmp_path)
    np.testing.assert_allclose(logits(ours, ids), want, rtol=1e-4, atol=1e-4)
    # and what we write back from it, PEFT reads again
    ours.save_pretrained(tmp_path / "again")
    np.testing.assert_allclose(_hf_logits(FIXTURES / fixture, tmp_path / "again", ids), want, rtol=1e-4, atol=1e-4)
