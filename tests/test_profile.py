"""tinygrad_lm.profile(), lens.draw_graph and `tinygrad-lm profile`: the profile counts what a step runs
(checked against the autograd graph itself), costs follow the stated formulas, leaving a profile
(nested, by an exception) puts every original back; the graph's DOT has the nodes and edges of
the model, and the command runs end to end on a tiny checkpoint. No timing is asserted."""
import inspect
import json
import re
import shutil
import sys
from collections import Counter

import numpy as np
import pytest

import tinygrad_lm as tg
import tinygrad_lm.functional as F
from tinygrad_lm import backend, cli, nn, optim, profiler
from tinygrad_lm.lens import draw_graph
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.ops.elementwise import Add
from tinygrad_lm.tensor import Function, _toposort


def tiny_gpt(n_layer=2):
    tg.manual_seed(0)
    return GPT(GPTConfig(vocab_size=29, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)).train()


def batch(B=3, T=16, vocab=29):
    ids = np.random.default_rng(0).integers(0, vocab, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def graph_counts(loss) -> Counter:
    """Function applications counted independently of the profiler: the nodes of the loss's graph."""
    return Counter(type(n).__name__ for n in _toposort(loss._ctx) if isinstance(n, Function))


def calls(p, phase) -> Counter:
    return Counter({name: ph[phase].calls for name, ph in p.ops.items() if phase in ph})


def originals() -> dict:
    """Every attribute the profiler may swap, as it is now."""
    out = {(cls, name): cls.__dict__[name] for cls in profiler._subclasses(Function)[1:]
           for name in ("forward", "backward", "add_grad_into") if name in cls.__dict__}
    out.update({(cls, name): cls.__dict__[name] for cls in profiler._subclasses(optim.Optimizer)
                for name in ("step", "zero_grad") if name in cls.__dict__})
    out.update({(m, "clip_grad_norm"): optim.clip_grad_norm for m in list(sys.modules.values())
                if isinstance(getattr(m, "__dict__", None), dict) and m.__dict__.get("clip_grad_norm") is optim.clip_grad_norm})
    return out


def assert_restored(before: dict):
    for (owner, name), fn in before.items():
        assert owner.__dict__[name] is fn, (owner, name)
    assert not profiler._active and not profiler._saved


# ---- the profiler ----------------------------------------------------------------------------

def test_training_step_counts_match_the_graph():
    model = tiny_gpt()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    x, y = batch()
    with tg.profile() as p:
        _, loss = model(x, y)
        expected = graph_counts(loss)
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    assert calls(p, "forward") == expected          # every op the forward ran is on the graph, once
    assert calls(p, "backward") == expected         # and every node's backward (or add_grad_into) ran once
    assert expected["Linear"] == 4 * 2 + 1 and expected["Attention"] == 2
    step = {name: ph["call"].calls for name, ph in p.ops.items() if "call" in ph}
    assert step == {"clip_grad_norm": 1, "AdamW.step": 1, "AdamW.zero_grad": 1}
    n = sum(q.size for q in model.parameters())
    assert p.ops["AdamW.step"]["call"].flops == 12 * n
    assert p.ops["AdamW.step"]["call"].kernels == {backend.implementation_kind(backend.implementation(
        "adamw", next(iter(model.parameters())).data))}


def test_the_trainer_step_is_profiled_through_its_own_clip_grad_norm(tmp_path):
    """train.py imported clip_grad_norm by name: the profile still sees it."""
    from tinygrad_lm.cli.profile import RandomTokens
    from tinygrad_lm.tokenizers import ByteTokenizer
    from tinygrad_lm.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, seq_len=8, progress=False),
                      model=tiny_gpt(1), tokenizer=ByteTokenizer(), data=RandomTokens(29))
    with tg.profile() as p:
        trainer.train_step()
    assert p.ops["clip_grad_norm"]["call"].calls == 1 and p.ops["AdamW.step"]["call"].calls == 1
    assert not (tmp_path / "run").exists()


def test_forward_only_has_no_backward_entries():
    model = tiny_gpt().eval()
    x, _ = batch()
    with tg.profile() as p, tg.no_grad():
        model(x)
    assert p.ops and all(set(phases) == {"forward"} for phases in p.ops.values())
    assert "backward" not in json.dumps(p.to_dict())
    assert p.ops["Linear"]["forward"].calls == 4 * 2 + 1
    assert " - " in p.table().splitlines()[2]       # the bwd column says "-", not 0


def test_times_are_non_negative_and_matmul_flops_are_2mnk():
    a = tg.randn(3, 4, 5, requires_grad=True)
    b = tg.randn(5, 6, requires_grad=True)
    w = tg.randn(7, 5, requires_grad=True)
    with tg.profile() as p:
        out = (a @ b).sum() + F.linear(a, w).sum()
        out.backward()
    mm, lin = p.ops["MatMul"], p.ops["Linear"]
    assert mm["forward"].flops == 2 * (3 * 4) * 6 * 5          # M = 12 rows, N = 6, K = 5
    assert mm["backward"].flops == 2 * mm["forward"].flops     # one product per input gradient
    assert lin["forward"].flops == 2 * 12 * 7 * 5
    assert mm["forward"].bytes == (a.size + b.size + 12 * 6) * 4
    for phases in p.ops.values():
        for s in phases.values():
            assert s.seconds >= 0 and s.calls >= 1 and s.bytes >= 0
    assert p.wall_s >= p.total().seconds >= 0 and p.overhead_s >= 0
    # views move nothing; a frozen weight asks for one product less
    with tg.profile() as q:
        (a.reshape(12, 5) @ b.detach()).sum().backward()
    assert q.ops["Reshape"]["forward"].bytes == 0
    assert q.ops["MatMul"]["backward"].flops == q.ops["MatMul"]["forward"].flops


def test_every_op_has_a_cost_formula():
    from test_registry import library_functions   # every Function the package defines, all modules imported
    ops = {c.__name__ for c in library_functions()}
    assert {"Attention", "QuantLinear"} <= ops
    assert ops <= set(profiler._FLOPS), sorted(ops - set(profiler._FLOPS))


def test_causal_attention_counts_the_visible_pairs():
    assert profiler._visible_pairs(4, 4) == 4 + 3 + 2 + 1
    assert profiler._visible_pairs(1, 5) == 5        # a decode step sees every cached key
    q = tg.randn(2, 3, 4, 8, requires_grad=True)
    with tg.profile() as p:
        F.scaled_dot_product_attention(q, q, q, causal=True)
    assert p.ops["Attention"]["forward"].flops == 2 * 3 * 10 * (2 * 8 + 2 * 8 + 5)


def test_leaving_restores_everything_nested_and_on_error():
    before = originals()
    x = tg.randn(4, 4, requires_grad=True)
    with tg.profile() as outer:
        (x * x).sum()
        with tg.profile() as inner:
            (x + x).sum()
        assert Add.forward is not before[(Add, "forward")]    # the outer profile still runs: still wrapped
        assert "Add" in inner.ops and "Mul" not in inner.ops
        (x - x).sum()
    assert_restored(before)
    assert {"Mul", "Add", "Sub", "Sum"} <= set(outer.ops) and "Sub" not in inner.ops
    assert outer.ops["Add"]["forward"].calls == inner.ops["Add"]["forward"].calls == 1
    with pytest.raises(ZeroDivisionError):
        with tg.profile():
            (x * 2).sum()
            1 / 0
    assert_restored(before)
    p = tg.profile()
    with p:
        with pytest.raises(RuntimeError, match="already running"):
            p.__enter__()
    assert_restored(before)


def test_table_and_dict():
    model = tiny_gpt(1)
    x, y = batch()
    with tg.profile() as p:
        for _ in range(2):
            model(x, y)[1].backward()
    text = p.table(steps=2)
    head, rule = text.splitlines()[:2]
    assert head.split()[:3] == ["op", "kernel", "calls"] and set(rule) == {"-"}
    row = next(line for line in text.splitlines() if line.startswith("Linear "))
    assert row.split()[2] == "5"                     # per step: 4 per block + the head
    for name in ("all ops", "rest (Python", "the profiler itself", "wall time inside the profile per step (2 steps)",
                 "kernel: fast ="):
        assert name in text
    d = json.loads(json.dumps(p.to_dict()))
    assert d["ops"]["Linear"]["forward"]["calls"] == 10 and d["wall_s"] > 0
    assert d["total"]["calls"] == sum(s["calls"] for ph in d["ops"].values() for s in ph.values())
    with pytest.raises(ValueError, match="steps"):
        p.table(steps=0)


def test_kernel_column_says_which_implementation_ran():
    x = tg.randn(4, 8, requires_grad=True)
    with tg.use_kernels("reference"), tg.profile() as p:
        (F.layer_norm(x) * 2).sum().backward()
    assert p.ops["LayerNorm"]["forward"].kernels == {"reference"} == p.ops["LayerNorm"]["backward"].kernels
    assert p.ops["Mul"]["forward"].kernels == {"numpy"}
    ids = np.array([[1, 2, 1]])
    w = tg.randn(5, 8, requires_grad=True)
    with tg.use_kernels("reference"), tg.profile() as p:
        F.embedding(ids, w).sum().backward()
    assert p.ops["Embedding"]["forward"].kernels == {"numpy"} and p.ops["Embedding"]["backward"].kernels == {"reference"}
    assert profiler._kernel_text(p.ops["Embedding"]) == "f:numpy b:reference"


# ---- draw_graph ----------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


def parse_dot(text):
    """{node id: label} and [(from, to)] of our DOT, checking that it is well formed."""
    assert text.startswith("digraph autograd {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    nodes = dict(re.findall(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)"', text, re.M))
    edges = re.findall(r"^\s*(n\d+) -> (n\d+);$", text, re.M)
    assert all(a in nodes and b in nodes for a, b in edges)
    return nodes, edges


def mlp_loss():
    tg.manual_seed(0)
    m = MLP()
    loss = F.cross_entropy(m(tg.randn(5, 4)), np.array([0, 1, 2, 0, 1]))
    return m, loss


def test_draw_graph_of_an_mlp_has_its_nodes_and_edges(tmp_path):
    m, loss = mlp_loss()
    nodes, edges = parse_dot(draw_graph(loss, params=dict(m.named_parameters())))
    first = {k: v.split("\\n")[0] for k, v in nodes.items()}
    assert sorted(first.values()) == sorted(["constant", "fc1.weight", "fc1.bias", "Linear", "Relu", "fc2.weight",
                                             "fc2.bias", "Linear", "CrossEntropy"])
    named = {(first[a], first[b]) for a, b in edges}
    assert named == {("constant", "Linear"), ("fc1.weight", "Linear"), ("fc1.bias", "Linear"), ("Linear", "Relu"),
                     ("Relu", "Linear"), ("fc2.weight", "Linear"), ("fc2.bias", "Linear"), ("Linear", "CrossEntropy")}
    assert len(edges) == 8
    ce = next(v for v in nodes.values() if v.startswith("CrossEntropy"))
    kind = backend.implementation_kind(backend.implementation("cross_entropy", np.zeros(1, np.float32)))
    assert ce == f"CrossEntropy\\n() float32\\nkernel: {kind}"
    assert "(8, 4) float32" in next(v for v in nodes.values() if v.startswith("fc1.weight"))
    # without params: leaves are "leaf"; without constants: no input box
    nodes, _ = parse_dot(draw_graph(loss, constants=False))
    assert Counter(v.split("\\n")[0] for v in nodes.values())["leaf"] == 4 and "constant" not in str(nodes)


def test_draw_graph_with_grads_shows_the_norms():
    m, loss = mlp_loss()
    nodes, _ = parse_dot(draw_graph(loss, params=dict(m.named_parameters()), grads=True))
    assert m.fc1.weight.grad is not None                  # it ran the backward
    label = next(v for v in nodes.values() if v.startswith("fc1.weight"))
    assert label.endswith(f"|grad| {np.linalg.norm(m.fc1.weight.grad):.3g}")
    assert next(v for v in nodes.values() if v.startswith("CrossEntropy")).endswith("|grad| 1")
    assert all("|grad|" in v for v in nodes.values() if not v.startswith("constant"))
    with pytest.raises(RuntimeError, match="retain_graph"):
        draw_graph(loss)                                    # the backward freed it


def test_draw_graph_collapses_repeated_layers_and_caps_nodes():
    model = tiny_gpt(n_layer=3)
    params = dict(model.named_parameters())
    _, loss = model(*batch())
    full, _ = parse_dot(draw_graph(loss, params))
    text = draw_graph(loss, params, collapse=True)
    nodes, edges = parse_dot(text)
    layers = [v for v in nodes.values() if "same ops as transformer.h.0" in v]
    assert [v.split("\\n")[0] for v in layers] == ["transformer.h.1", "transformer.h.2"]
    assert text.count("subgraph cluster_") == 1 and 'label="transformer.h.0"' in text
    per_layer = sum("transformer.h.1." in v for v in full.values()) + int(re.search(r"\((\d+) ops", layers[0])[1])
    assert len(nodes) == len(full) - 2 * per_layer + 2
    capped, cap_edges = parse_dot(draw_graph(loss, params, max_nodes=20))
    assert len(capped) == 21 and any(v.startswith("... ") for v in capped.values())
    assert "CrossEntropy" in str(capped)                   # the nodes nearest the output are kept
    with pytest.raises(ValueError, match="collapse=True needs params"):
        draw_graph(loss, collapse=True)
    with pytest.raises(ValueError, match="max_nodes"):
        draw_graph(loss, max_nodes=0)


def test_draw_graph_writes_files(tmp_path, monkeypatch):
    _, loss = mlp_loss()
    text = draw_graph(loss, path=tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    if shutil.which("dot"):
        draw_graph(loss, path=tmp_path / "g.svg")
        assert "<svg" in (tmp_path / "g.svg").read_text()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="Graphviz's `dot` program was not found.*apt install graphviz"):
        draw_graph(loss, path=tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists() and (tmp_path / "h.dot").read_text() == text
    with pytest.raises(ValueError, match=".svg"):
        draw_graph(loss, path=tmp_path / "g.jpg")


# ---- tinygrad-lm profile -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    (d / "input.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    assert cli.main(["train", "--data", str(d / "input.txt"), "--max_iters", "1", "--n_layer", "1", "--n_embd", "16",
                     "--n_head", "2", "--block_size", "8", "--batch_size", "2", "--eval_iters", "1", "--quiet",
                     "--sample_tokens", "0", "--out", str(d / "run")]) == 0
    return d


def test_cli_profile_end_to_end(tiny_run, capsys):
    capsys.readouterr()
    out_json = tiny_run / "p.json"
    assert cli.main(["profile", "--ckpt", str(tiny_run / "run"), "--steps", "2", "--batch-size", "3",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "batch 3 x 8 tokens; training step" in out and "2 steps after 1 warm-up" in out
    for name in ("Linear ", "Attention ", "AdamW.step ", "clip_grad_norm ", "per step (2 steps)"):
        assert name in out, name
    d = json.loads(out_json.read_text())
    assert d["steps"] == 2 and d["seq_len"] == 8 and d["ops"]["AdamW.step"]["call"]["calls"] == 2
    assert d["ops"]["Linear"]["forward"]["calls"] == d["ops"]["Linear"]["backward"]["calls"] == 2 * 5
    assert d["ops"]["Linear"]["forward"]["flops"] > 0
    # inference, on the text, with the reference kernels
    assert cli.main(["profile", "--ckpt", str(tiny_run / "run"), "--forward-only", "--data",
                     str(tiny_run / "input.txt"), "--kernels", "reference", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "forward only" in out and "reference kernels" in out and "AdamW" not in out
    assert re.search(r"^LayerNorm +reference ", out, re.M)


@pytest.mark.parametrize("args, fragment", [(["--seq-len", "9"], "does not fit the model's context of 8"),
                                            (["--steps", "0"], "--steps must be >= 1"),
                                            (["--warmup", "-1"], "--warmup must be >= 0")])
def test_cli_profile_bad_input(tiny_run, capsys, args, fragment):
    assert cli.main(["profile", "--ckpt", str(tiny_run / "run")] + args) == 2
    assert fragment in capsys.readouterr().err


def test_cli_profile_is_a_command():
    assert "profile" in cli.COMMANDS and inspect.ismodule(cli.COMMANDS["profile"])
