"""tinygrad_lm.scaling: the FLOP count, both fits, the calculator, the resumable sweep and the command.

The parametric fits here start from a few points of Hoffmann et al.'s grid (SMALL_GRID): the full
4,500 starts cost half a minute on two cores and find the same minimum on data this clean."""
import json
import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from tinygrad_lm.cli import main  # noqa: E402
from tinygrad_lm.models import GPTConfig  # noqa: E402
from tinygrad_lm.scaling import (PUBLISHED, SweepConfig, approach2, compute_optimal, finished_runs,  # noqa: E402
                                 fit_parametric, flops_per_token, param_count, predict_loss, run_sweep)
from tinygrad_lm.scaling import fit as fit_module  # noqa: E402
from tinygrad_lm.scaling.fit import HOFFMANN_GRID, _objective  # noqa: E402

SMALL_GRID = {"alpha": [0.5, 1.0], "beta": [0.5, 1.0], "e": [0.0, 0.5], "a": [5.0, 10.0], "b": [5.0, 10.0]}
CHINCHILLA = {k: PUBLISHED["chinchilla"][k] for k in ("E", "A", "B", "alpha", "beta")}


# ---------------------------------------------------------------- FLOPs

def test_flop_count_equals_a_hand_count():
    # 2 layers, 64 wide, 4 heads of 16, MLP 256, vocabulary 512, context 64 (Chinchilla's table A4 per token)
    c = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64)
    embeddings = 2 * 512 * 64
    attention = (2 * 64 * 3 * 64        # Q, K, V projections
                 + 2 * 64 * 64          # q . k logits over 64 positions, 4 heads x 16
                 + 3 * 4 * 64           # softmax
                 + 2 * 64 * 64          # softmax @ values
                 + 2 * 64 * 64)         # output projection
    mlp = 2 * (64 * 256 + 256 * 64)
    logits = 2 * 64 * 512
    forward = embeddings + 2 * (attention + mlp) + logits
    got = flops_per_token(c)
    assert (got["embeddings"], got["attention"], got["mlp"], got["logits"]) == (embeddings, 2 * attention, 2 * mlp,
                                                                               logits)
    assert got["forward"] == forward == 361_984
    assert got["training"] == 3 * forward
    # parameters: wte 512x64, wpe 64x64, per layer 2 norms + c_attn + c_proj + c_fc + c_proj (biases), ln_f
    layer = 2 * 128 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    n = 512 * 64 + 64 * 64 + 2 * layer + 128
    assert got["params"] == param_count(c) == n == 136_960
    assert got["six_n"] == 6 * n
    assert param_count(c, non_embedding=True) == n - 512 * 64 - 64 * 64


def test_flop_count_of_grouped_query_attention_and_swiglu():
    c = GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu",
                  mlp_hidden=176, pos="rope", norm="rmsnorm", bias=False, tie_weights=False)
    got = flops_per_token(c, seq_len=16)
    qkv = 2 * 64 * (4 * 16 + 2 * 2 * 16)          # K and V have half the heads
    assert got["attention"] == qkv + 2 * 16 * 64 + 3 * 4 * 16 + 2 * 16 * 64 + 2 * 64 * 64
    assert got["mlp"] == 2 * 3 * 64 * 176          # gate, up and down
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(c, seq_len=33)


# ---------------------------------------------------------------- Approach 3

def test_huber_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    lN, lD = np.log(rng.uniform(1e6, 1e9, 20)), np.log(rng.uniform(1e8, 1e11, 20))
    lL = np.log(rng.uniform(2, 4, 20))
    theta = np.array([6.0, 6.5, 0.5, 0.35, 0.3])
    value, grad = _objective(theta, lN, lD, lL, 0.05)
    eps = 1e-6
    numeric = [(_objective(theta + eps * e, lN, lD, lL, 0.05)[0] - _objective(theta - eps * e, lN, lD, lL, 0.05)[0])
               / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_parametric_fit_recovers_known_parameters_from_noisy_data():
    rng = np.random.default_rng(0)
    N = np.repeat(np.geomspace(1e7, 1e10, 10), 10)
    D = np.tile(np.geomspace(1e9, 1e12, 10), 10)
    L = predict_loss(CHINCHILLA, N, D) * np.exp(rng.normal(0, 0.001, N.shape))   # 0.1% noise
    got = fit_parametric(N, D, L, grid=SMALL_GRID)
    assert set(got) == {"E", "A", "B", "alpha", "beta"}
    for k, v in CHINCHILLA.items():
        assert abs(got[k] / v - 1) < 0.05, (k, got[k], v)


def test_hoffmanns_grid_of_initialisations():
    assert math.prod(len(v) for v in HOFFMANN_GRID.values()) == 4500
    assert list(HOFFMANN_GRID["a"]) == [0, 5, 10, 15, 20, 25] and list(HOFFMANN_GRID["e"]) == [-1, -0.5, 0, 0.5, 1]


def test_parametric_fit_rejects_bad_data():
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_parametric([1e6] * 4, [1e8] * 4, [3.0] * 4)
    with pytest.raises(ValueError, match="L must be positive"):
        fit_parametric([1e6] * 5, [1e8] * 5, [3.0, 3.0, -1.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="one value per run"):
        fit_parametric([1e6] * 5, [1e8] * 6, [3.0] * 5)


# ---------------------------------------------------------------- Approach 2

def test_isoflop_parabolas_recover_the_compute_optimal_exponent():
    """IsoFLOP curves drawn from Epoch's L(N, D) under C = 6ND: the minima follow N_opt ~ C^a with
    a = beta / (alpha + beta) (0.513) and D_opt ~ C^b, b = 1 - a."""
    law = {k: PUBLISHED["epoch"][k] for k in ("E", "A", "B", "alpha", "beta")}
    a_true = law["beta"] / (law["alpha"] + law["beta"])
    runs = []
    for C in np.geomspace(1e18, 1e22, 5):
        n_opt = compute_optimal(law, flops=C)["params"]
        for n in n_opt * np.geomspace(1 / 3, 3, 7):
            d = C / (6 * n)
            runs.append({"budget": C, "params": n, "tokens": d, "val_loss": float(predict_loss(law, n, d))})
    got = approach2(runs)
    assert len(got["curves"]) == 5 and all(c["inside"] for c in got["curves"])
    assert abs(got["a"] - a_true) < 0.01 and abs(got["b"] - (1 - a_true)) < 0.01
    assert abs(got["a"] + got["b"] - 1) < 1e-6   # D_opt = C / (6 N_opt) on these curves


def test_isoflop_curve_without_a_minimum_is_skipped_with_the_reason():
    runs = [{"budget": 1e12, "params": n, "tokens": 1e12 / (6 * n), "val_loss": 5 - 0.1 * math.log(n) ** 2}
            for n in (1e4, 2e4, 4e4)]
    got = approach2(runs)
    assert got["curves"] == [] and got["a"] is None
    assert "does not curve upwards" in got["skipped"][0][1]


# ---------------------------------------------------------------- the calculator

def test_epoch_fit_at_chinchillas_compute_gives_about_20_tokens_per_parameter():
    got = compute_optimal(PUBLISHED["epoch"], flops=5.76e23)
    assert 16 < got["tokens"] / got["params"] < 22          # 18.4; Chinchilla 70B was trained at 20
    assert 6e10 < got["params"] < 8e10                       # about Chinchilla's 70B
    assert got["flops"] == pytest.approx(5.76e23)
    # the same optimum reached from its size or its token count
    for kw in ({"params": got["params"]}, {"tokens": got["tokens"]}):
        again = compute_optimal(PUBLISHED["epoch"], **kw)
        for k in ("params", "tokens", "flops", "loss"):
            assert again[k] == pytest.approx(got[k], rel=1e-9)


def test_compute_optimal_rejects_bad_requests():
    with pytest.raises(ValueError, match="exactly one"):
        compute_optimal(PUBLISHED["epoch"], params=1e9, flops=1e21)
    with pytest.raises(ValueError, match="flops must be a positive number, got -1"):
        compute_optimal(PUBLISHED["epoch"], flops=-1.0)


# ---------------------------------------------------------------- the sweep

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}  # line {i}\n" for i in range(3000))


def tiny_sweep(data, budgets, **kw) -> SweepConfig:
    """Seconds-long: 3 shapes of 1 layer, context 16, 4 rows a batch, a 300-token BPE."""
    return SweepConfig(budgets=budgets, points=3, data=str(data), vocab_size=300, seq_len=16, batch_size=4,
                       eval_iters=2, min_iters=5, ladder=((1, 8), (1, 16), (1, 24)), **kw)


def test_sweep_resume_skips_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "code.txt"
    data.write_text(TEXT)
    out = tmp_path / "sweep"
    first = run_sweep(out, tiny_sweep(data, (5e7,)), log=lambda m: None)
    assert first["trained"] == 3 and len(first["runs"]) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    # a kill while writing a record leaves half a line: ignored, and the next record starts on its own line
    with open(out / "runs.jsonl", "a") as f:
        f.write('{"name": "C9e+09_L1_d8", "val_')
    second = run_sweep(out, tiny_sweep(data, (5e7, 1e8)), log=lambda m: None)
    assert second["trained"] == 3                              # only the new budget's runs
    runs = finished_runs(out)
    assert len(runs) == 6 and sorted({r["budget"] for r in runs}) == [5e7, 1e8]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir() if p.name in stamps} == stamps
    for r in runs:
        assert r["iters"] >= 5 and r["tokens"] == r["iters"] * 4 * 16
        assert r["flops"] == pytest.approx(r["budget"], rel=0.2)
        # bits per byte: nats per token / ln 2 / the validation text's bytes per token, one ratio for all runs
        bytes_per_token = r["val_loss"] / math.log(2) / r["val_bpb"]
        assert 1 < bytes_per_token < 8
        assert bytes_per_token == pytest.approx(runs[0]["val_loss"] / math.log(2) / runs[0]["val_bpb"])
        log = [json.loads(line) for line in (out / "runs" / r["name"] / "log.jsonl").read_text().splitlines()]
        assert log[-1]["iter"] == r["iters"] and log[-1]["eval"]   # the one loop's log, evaluated at its end
        lrs = [x["lr"] for x in log if not x.get("eval")]
        assert lrs[-1] < lrs[0] or r["iters"] < 10                 # a cosine decaying over the run's own length
    again = run_sweep(out, tiny_sweep(data, (5e7, 1e8)), log=lambda m: None)
    assert again["trained"] == 0 and len(again["runs"]) == 6
    with pytest.raises(ValueError, match="other settings .*vocab_size 300 there, 400 now"):
        run_sweep(out, SweepConfig(**{**tiny_sweep(data, (5e7,)).__dict__, "vocab_size": 400}), log=lambda m: None)


def test_sweep_config_rejects_bad_values():
    with pytest.raises(ValueError, match="positive numbers of FLOPs, got -1"):
        SweepConfig(budgets=(1e12, -1))
    with pytest.raises(ValueError, match="differ"):
        SweepConfig(budgets=(1e12, 1e12))
    with pytest.raises(ValueError, match="points must be at least 3"):
        SweepConfig(points=2)


# ---------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """`scaling run` end to end on a small text: 2 budgets x 3 sizes, the default ladder's smallest."""
    tmp = tmp_path_factory.mktemp("scaling")
    mp = pytest.MonkeyPatch()
    mp.setenv("TINYGRAD_LM_CACHE", str(tmp / "cache"))
    data = tmp / "code.txt"
    data.write_text(TEXT)
    out = tmp / "sweep"
    try:
        rc = main(["scaling", "run", "--budgets", "5e8,1e9", "--points", "3", "--out", str(out), "--data", str(data),
                   "--vocab-size", "300", "--seq-len", "16", "--batch-size", "4"])
    finally:
        mp.undo()
    assert rc == 0
    return out


def test_cli_run_fit_and_predict_from_our_fit(swept, capsys, monkeypatch):
    runs = finished_runs(swept)
    assert len(runs) == 6 and {r["budget"] for r in runs} == {5e8, 1e9}
    assert main(["scaling", "run", "--budgets", "5e8,1e9", "--points", "3", "--out", str(swept), "--data",
                 str(swept.parent / "code.txt"), "--vocab-size", "300", "--seq-len", "16", "--batch-size", "4"]) == 0
    assert "(6 already done)" in capsys.readouterr().out
    monkeypatch.setattr(fit_module, "HOFFMANN_GRID", SMALL_GRID)
    assert main(["scaling", "fit", str(swept), "--json", "--bootstrap", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    a3 = result["approach3"]
    assert set(a3) >= {"E", "A", "B", "alpha", "beta", "a", "b", "ci"} and result["runs"] == 6
    assert a3["a"] + a3["b"] == pytest.approx(1)
    assert json.loads((swept / "fit.json").read_text()) == result
    assert main(["scaling", "fit", str(swept), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "Approach 2" in text and "Approach 3" in text and "chinchilla" in text
    pytest.importorskip("matplotlib")
    for name in ("isoflop.png", "loss_vs_n_d.png", "predicted_vs_measured.png"):
        assert (swept / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["scaling", "predict", "--params", "20000", "--fit", str(swept), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"params", "tokens", "flops", "loss"} and got["params"] == pytest.approx(20000)


def test_cli_predict_and_table_with_published_fits(capsys):
    assert main(["scaling", "predict", "--flops", "5.76e23", "--fit", "epoch", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"params", "tokens", "flops", "loss"} and 16 < got["tokens"] / got["params"] < 22
    assert main(["scaling", "predict", "--tokens", "1.4e12", "--fit", "chinchilla"]) == 0
    assert "tokens 1.4e+12" in capsys.readouterr().out
    assert main(["scaling", "table", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["GPT-3 175B"]["flops"] == pytest.approx(3.15e23)
    assert rows["Chinchilla 70B"]["tokens_per_param"] == pytest.approx(20)
    assert main(["scaling", "table", "--fit", "chinchilla"]) == 0
    assert "Hoffmann et al. 2022" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["scaling"], "choose a command: run, fit, predict, table"),
    (["scaling", "predict"], "one of the arguments --params --flops --tokens is required"),
    (["scaling", "predict", "--params", "-5"], "expected a positive number (e.g. 7e9), got '-5'"),
    (["scaling", "predict", "--params", "abc"], "got 'abc'"),
    (["scaling", "predict", "--params", "1e9", "--flops", "1e21"], "not allowed with argument"),
    (["scaling", "predict", "--flops", "1e21", "--fit", "nowhere"], "--fit must be chinchilla, epoch or a sweep folder"),
    (["scaling", "run", "--budgets", "1e11,x", "--out", "d"], "got 'x'"),
    (["scaling", "run", "--budgets", "1e12"], "the following arguments are required: --out"),
    (["scaling", "run", "--budgets", "1e5", "--out", "{tmp}/small"], "budget 1e+05 FLOPs is too small for this grid"),
    (["scaling", "run", "--budgets", "1e11", "--points", "2", "--out", "{tmp}/p"], "points must be at least 3"),
    (["scaling", "fit", "{tmp}/missing"], "sweep folder not found"),
    (["scaling", "fit", "{tmp}"], "holds no finished runs"),
    (["scaling", "predict", "--flops", "1e21", "--fit", "{tmp}"], "holds no fit.json; fit the sweep first"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(args, fragment, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygrad-lm: error: ") and fragment in err, err
    assert not (tmp_path / "small").exists()   # a refused sweep writes nothing
