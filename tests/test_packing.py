"""Packed SFT rows: several conversations in one row of the batch, none attending to another, with
positions restarting at each, so every conversation gets the logits (and loss) it gets alone."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm import functional as F
from tinygrad_lm.align.sft import IGNORE, SFTData, chat_template_of, encode_conversation
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.nn import packed_rows
from tinygrad_lm.peft import PromptTuningConfig, get_peft_model
from tinygrad_lm.tokenizers import ByteTokenizer

from strategies import parameters_as_inputs

TOK = ByteTokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
FAMILIES = {
    "gpt2": {},
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tie_weights=False),
    "sinusoidal": dict(pos="sinusoidal"),
}


def convo(user, reply):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


CONVOS = [convo("Say hi", "hi"), convo("Reverse: abc", "cba"), convo("2+2?", "4"), convo("Upper: ok", "OK")]


def model_of(family, dtype="float32", seed=0, **kw):
    tg.manual_seed(seed)
    cfg = dict(vocab_size=TOK.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=16, **FAMILIES[family])
    model = GPT(GPTConfig(**{**cfg, **kw})).eval()
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():   # sizeable weights: every path carries signal
        base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0
        p.data[...] = base + rng.normal(0.0, 0.3, p.shape)
    return model.double() if dtype == "float64" else model


def packed_batch(seq_len=100, batch_size=3, seed=0):
    data = SFTData(CONVOS, CONVOS[:1], TOK, packing=True)
    return data.get_batch("train", batch_size, seq_len, np.random.default_rng(seed))


def alone(x, y, seg, b, k):
    """Conversation k of row b as its own (1, n) row: inputs and targets."""
    cols = np.flatnonzero(seg[b] == k)
    return x[b, cols][None], y[b, cols][None], cols


# ---- the batches ---------------------------------------------------------------------------------

def test_packed_rows_hold_whole_conversations_back_to_back():
    x, y, seg = packed_batch()
    encoded = [encode_conversation(c["messages"], TOK, chat_template_of(TOK)) for c in CONVOS]
    singles = [(ids[:-1], np.where(trained[1:], ids[1:], IGNORE)) for ids, trained in encoded]
    for b in range(x.shape[0]):
        n_seg = seg[b].max() + 1
        assert n_seg >= 2                               # short conversations share a row
        ends = []
        for k in range(n_seg):
            xk, yk, cols = alone(x, y, seg, b, k)
            assert np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))   # contiguous
            assert any(np.array_equal(xk[0], xs) and np.array_equal(yk[0], ys) for xs, ys in singles)
            ends.append(cols[-1] + 1)
        pad = seg[b] == -1                              # the rest of the row: padding, never trained
        assert np.array_equal(np.flatnonzero(pad), np.arange(ends[-1], x.shape[1]))
        assert (y[b, pad] == IGNORE).all() and (x[b, pad] == 0).all()
    # the first conversation of each next row did not fit where the row before ended
    for b in range(1, x.shape[0]):
        first = np.sum(seg[b] == 0)
        assert np.sum(seg[b - 1] >= 0) + first > x.shape[1]
    # the same generator state gives the same batch; the data's order is the rng's
    again = packed_batch()
    assert all(np.array_equal(a, b) for a, b in zip((x, y, seg), again))
    assert any(not np.array_equal(a, b) for a, b in zip((x, seg), packed_batch(seed=1)[::2]))


def test_a_conversation_longer_than_the_row_is_still_an_error():
    data = SFTData([convo("a" * 80, "b"), convo("c", "d")], CONVOS[:1], TOK, packing=True)
    with pytest.raises(ValueError, match="longest train conversation"):
        data.check_block_size(64)


# ---- the model -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-10)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_logits_and_loss_equal_each_conversation_alone(family, dtype, tol):
    model = model_of(family, dtype)
    x, y, seg = packed_batch()
    logits, loss = model(x, y, seg)                                   # (B, T, V): as the Trainer calls it
    weighted, n_trained = 0.0, 0
    for b in range(x.shape[0]):
        for k in range(seg[b].max() + 1):
            xk, yk, cols = alone(x, y, seg, b, k)
            single, single_loss = model(xk, yk)                       # (1, n, V)
            np.testing.assert_allclose(logits.data[b, cols], single.data[0], atol=tol, rtol=0)
            n = int((yk != IGNORE).sum())
            weighted, n_trained = weighted + n * single_loss.item(), n_trained + n
    # the loss of a packed batch is the token-weighted loss of its conversations
    np.testing.assert_allclose(loss.item(), weighted / n_trained, rtol=tol)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_attention_across_the_boundary(family):
    model = model_of(family)
    x, y, seg = packed_batch()
    logits, _ = model(x, y, seg)
    first, second = seg[0] == 0, seg[0] == 1
    x2 = x.copy()
    x2[0, np.flatnonzero(first)[-1]] = TOK.token_id("<|endoftext|>")   # the last token before the boundary
    logits2, _ = model(x2, y, seg)
    np.testing.assert_array_equal(logits2.data[0, second], logits.data[0, second])
    assert not np.array_equal(logits2.data[0, first], logits.data[0, first])
    # without segment ids the second conversation does see the first (the test can tell)
    assert not np.array_equal(model(x2, y)[0].data[0, second], model(x, y)[0].data[0, second])


def test_a_soft_prompt_comes_before_every_packed_conversation():
    """Prompt tuning: each conversation sees the virtual tokens at positions 0..P-1 and sits after
    them, as it does alone."""
    model = get_peft_model(model_of("llama"), PromptTuningConfig(num_virtual_tokens=3)).eval()
    x, y, seg = packed_batch(seq_len=90)
    logits, _ = model(x, y, seg)
    for k in range(seg[0].max() + 1):
        xk, yk, cols = alone(x, y, seg, 0, k)
        np.testing.assert_allclose(logits.data[0, cols], model(xk, yk)[0].data[0], atol=1e-5, rtol=0)


def test_one_segment_per_row_is_plain_causal_attention():
    """Rows of one conversation each with segment ids all 0: the masked path computes what the fused
    causal attention does."""
    model = model_of("llama", "float64")
    x, y = SFTData(CONVOS, CONVOS[:1], TOK).get_batch("train", 2, 60, np.random.default_rng(0))
    plain, _ = model(x, y)
    one, _ = model(x, y, np.zeros_like(x))
    np.testing.assert_allclose(one.data, plain.data, atol=1e-10, rtol=0)


def test_packed_rows_mask_and_positions():
    seg = np.array([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    mask, pos = packed_rows(seg)
    assert mask.shape == (2, 1, 6, 6)
    assert np.array_equal(pos, [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    assert np.array_equal(mask[1, 0], np.tril(np.ones((6, 6), bool)))
    assert not mask[0, 0, 2:5, :2].any() and mask[0, 0, 4, 2:5].all()
    mask, pos = packed_rows(seg, virtual=2)                      # two soft-prompt tokens before each row
    assert mask.shape == (2, 1, 8, 8) and mask[:, 0, :, :2].all()
    assert np.array_equal(pos[0], [0, 1, 2, 3, 2, 3, 4, 2])


def test_gradcheck_block_diagonal_attention():
    rng = np.random.default_rng(0)
    seg = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 1, -1]])
    mask, _ = packed_rows(seg)                                       # (B, 1, T, T)
    q, k, v = (tg.Tensor(rng.normal(size=(2, 3, 5, 4)), requires_grad=True) for _ in range(3))
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True, mask=mask), [q, k, v])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradcheck_packed_model_float64(family):
    model = model_of(family, "float64", block_size=12, vocab_size=TOK.vocab_size)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, (2, 8))
    y = rng.integers(0, 50, (2, 8))
    y[0, 3] = IGNORE
    seg = np.array([[0, 0, 0, 1, 1, 1, 1, -1], [0, 0, 1, 1, 1, 2, 2, 2]])
    params, fn, restore = parameters_as_inputs(model, lambda: model(x, y, seg)[1])
    try:
        assert gradcheck(fn, params, directional=True, seed=0)
    finally:
        restore()


def test_segment_ids_errors_name_the_shapes():
    model = model_of("gpt2")
    x = np.zeros((2, 8), dtype=np.int64)
    with pytest.raises(ValueError, match=r"idx's shape \(2, 8\), got shape \(2, 7\)"):
        model(x, None, np.zeros((2, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="integer array"):
        model(x, None, np.zeros((2, 8)))
    with pytest.raises(ValueError, match="KV cache"):
        model(x, segment_ids=np.zeros_like(x), cache=model.new_cache(2))


# ---- the command ---------------------------------------------------------------------------------

def test_sft_command_with_packing(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    from tinygrad_lm.align import sft
    from tinygrad_lm.align.jsonl import write_jsonl
    from tinygrad_lm.checkpoint import load_checkpoint
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    packed = []
    real_pack = sft.SFTData._pack
    monkeypatch.setattr(sft.SFTData, "_pack", staticmethod(lambda *a: packed.append(1) or real_pack(*a)))
    write_jsonl(chat_base / "chats.jsonl", [{"prompt": f"Say {i}", "completion": str(i)} for i in range(10)])
    args = ["sft", "--model", "base", "--data", "chats.jsonl", "--packing", "--out", "run_p", "--max_iters", "2",
            "--eval_interval", "2", "--eval_iters", "1", "--batch_size", "2", "--seq_len", "100", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert load_checkpoint(chat_base / "run_p")["meta"]["finetune"]["data"]["packing"] is True
    assert packed
    packed.clear()
    assert cli.main(["sft", "--resume", "--out", "run_p", "--max_iters", "3", "--quiet"]) == 0, capsys.readouterr().err
    assert packed                                                    # --resume packs as the run did
