"""The training loop: exact resume, Ctrl-C, NaN detection, the log, gradient accumulation and
TrainConfig validation. Tiny models and a few iterations only."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinygrad_lm.train import TrainConfig, Trainer, TrainingError, plot_losses

MODEL = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.1)
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 30


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT)
    return str(p)


def _cfg(data, out, **kw):
    base = dict(out_dir=str(out), data=data, batch_size=4, max_iters=8, eval_interval=3, eval_iters=2,
                log_interval=1, warmup_iters=2, lr_decay_iters=8, learning_rate=1e-2, sample_tokens=0,
                progress=False)
    return TrainConfig(**{**base, **kw})


def _trainer(data, out, resume=False, model=MODEL, **kw):
    return Trainer(_cfg(data, out, **kw), dict(model), resume=resume, log=lambda s: None)


def _params(trainer):
    return {k: np.array(v.data if hasattr(v, "data") else v) for k, v in trainer.model.state_dict().items()}


def _log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def _assert_same_optimizer(a, b):
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert np.array_equal(v, sb["state"][i][k]), (i, k)


def _steps(log):
    return {r["iter"]: r["train_loss"] for r in log if not r.get("eval")}


def _evals(log):
    return {r["iter"]: (r["train_loss"], r["val_loss"]) for r in log if r.get("eval")}


@pytest.fixture
def uninterrupted(data, tmp_path):
    t = _trainer(data, tmp_path / "full")
    t.train()
    return t


@pytest.mark.parametrize("k", [3, 5])  # on and between eval steps
def test_resume_equals_uninterrupted(data, tmp_path, uninterrupted, k):
    first = _trainer(data, tmp_path / "part", max_iters=k)
    first.train()
    assert load_checkpoint(tmp_path / "part")["meta"]["step"] == k
    resumed = _trainer(data, tmp_path / "part", resume=True)
    assert resumed.step == k
    resumed.train()
    assert resumed.step == uninterrupted.step == 8
    _assert_same_params(resumed, uninterrupted)
    _assert_same_optimizer(resumed, uninterrupted)

    full, part = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert _steps(part) == _steps(full)  # every iter 1..8, bit-identical losses
    assert sorted(_steps(full)) == list(range(1, 9))
    evals = _evals(part)
    for it, losses in _evals(full).items():
        assert evals[it] == losses
    assert set(evals) - set(_evals(full)) <= {k}  # only the interrupted run's final eval is extra
    # and the final checkpoint holds the same weights
    ck = load_checkpoint(tmp_path / "part")["model"]
    for name, v in _params(uninterrupted).items():
        assert np.array_equal(ck[name], v)


def test_dropout_uses_the_global_rng_so_resume_must_restore_it(data, tmp_path, uninterrupted):
    """Guard for the test above: with dropout on, a resume that forgot the global RNG state
    would diverge, so the comparison really checks the RNG restore."""
    from tinygrad_lm.tensor import manual_seed
    first = _trainer(data, tmp_path / "part", max_iters=5)
    first.train()
    resumed = _trainer(data, tmp_path / "part", resume=True)
    manual_seed(999)  # clobber what _restore set
    resumed.train()
    assert not all(np.array_equal(a, b) for a, b in zip(_params(resumed).values(), _params(uninterrupted).values()))


def test_evaluation_does_not_change_training(data, tmp_path, uninterrupted):
    other = _trainer(data, tmp_path / "noeval", eval_interval=100)
    other.train()
    _assert_same_params(other, uninterrupted)


def test_resume_keeps_the_runs_data_and_seed(data, tmp_path, uninterrupted):
    first = _trainer(data, tmp_path / "part", max_iters=4)
    first.train()
    # a different data path, seed and batch size on resume are overridden by the checkpoint's
    resumed = Trainer(_cfg(None, tmp_path / "part", seed=7, batch_size=2), None, resume=True, log=lambda s: None)
    assert (resumed.cfg.data, resumed.cfg.seed, resumed.cfg.batch_size) == (data, 1337, 4)
    resumed.train()
    _assert_same_params(resumed, uninterrupted)


def test_resume_errors(data, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _trainer(data, tmp_path / "none", resume=True)
    t = _trainer(data, tmp_path / "run", max_iters=1)
    t.train()
    ck = load_checkpoint(tmp_path / "run")
    # weights of the wrong shape for the model config
    bad = dict(ck["model"])
    bad["transformer.wte.weight"] = np.zeros((3, 3), np.float32)
    save_checkpoint(tmp_path / "shape", bad, ck["meta"], ck["optimizer"])
    with pytest.raises(CheckpointError, match="does not fit"):
        _trainer(data, tmp_path / "shape", resume=True)
    # a checkpoint with weights only (e.g. saved by hand): not resumable, but a clear error
    meta = {k: ck["meta"][k] for k in ("model_config", "tokenizer", "step")}
    save_checkpoint(tmp_path / "weights", ck["model"], meta)
    with pytest.raises(CheckpointError, match="train_config"):
        _trainer(data, tmp_path / "weights", resume=True)


def test_resume_after_a_crash_rewrites_the_log_from_the_checkpoint(data, tmp_path, uninterrupted):
    """A crash (no Ctrl-C, no save) after iter 5 leaves log lines past the step-3 checkpoint,
    maybe a half-written last line: resuming redoes those iters and logs each once."""
    t = _trainer(data, tmp_path / "run")
    step = t.train_step

    def crash():
        if t.step == 5:
            raise MemoryError("simulated crash")
        return step()

    t.train_step = crash
    with pytest.raises(MemoryError):
        t.train()
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 3
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"iter": 6, "train_lo')  # killed mid-write
    resumed = _trainer(data, tmp_path / "run", resume=True)
    resumed.train()
    _assert_same_params(resumed, uninterrupted)
    def strip(log):  # timings differ between runs
        return [{k: v for k, v in r.items() if k not in ("ms_per_iter", "tokens_per_s")} for r in log]

    assert strip(_log(tmp_path / "run")) == strip(_log(tmp_path / "full"))


def test_log_lines(data, tmp_path, uninterrupted):
    log = _log(tmp_path / "full")
    steps = [r for r in log if not r.get("eval")]
    evals = [r for r in log if r.get("eval")]
    assert [r["iter"] for r in steps] == list(range(1, 9))
    assert [r["iter"] for r in evals] == [0, 3, 6, 8]
    for r in steps:
        assert {"iter", "train_loss", "lr", "ms_per_iter"} <= set(r)
        assert math.isfinite(r["train_loss"]) and r["ms_per_iter"] > 0 and r["lr"] > 0
        assert r["lr"] == uninterrupted.lr_at(r["iter"] - 1)  # the lr that step used
    for r in evals:
        assert {"iter", "train_loss", "val_loss", "lr"} <= set(r)
        assert math.isfinite(r["val_loss"])
    assert uninterrupted.best_val == min(r["val_loss"] for r in evals)
    assert load_checkpoint(tmp_path / "full")["meta"]["best_val_loss"] == uninterrupted.best_val


def test_log_interval(data, tmp_path):
    t = _trainer(data, tmp_path / "run", max_iters=7, log_interval=3, eval_interval=100)
    t.train()
    log = _log(tmp_path / "run")
    assert [r["iter"] for r in log if not r.get("eval")] == [1, 3, 6]  # the first, then every 3rd
    assert [r["iter"] for r in log if r.get("eval")] == [0, 7]          # start and end


def test_loss_plot_written_with_matplotlib(data, tmp_path, uninterrupted):
    pytest.importorskip("matplotlib")
    png = tmp_path / "full" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_plot_skipped_without_matplotlib(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    t = _trainer(data, tmp_path / "run", max_iters=2)
    t.train()
    assert not (tmp_path / "run" / "loss.png").exists()
    assert plot_losses(tmp_path / "run" / "log.jsonl", tmp_path / "x.png") is None


def test_loss_plot_separates_train_and_val(tmp_path, monkeypatch):
    """plot_losses against a stand-in matplotlib: step records make the train curve, eval records
    the val curve."""
    import types
    from unittest import mock
    fig, ax = mock.MagicMock(), mock.MagicMock()
    fig.savefig.side_effect = lambda path, **kw: Path(path).write_bytes(b"png")
    plt = types.SimpleNamespace(subplots=lambda **kw: (fig, ax), close=lambda f: None)
    mpl = types.ModuleType("matplotlib")
    mpl.use, mpl.pyplot = (lambda backend: None), plt
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", plt)
    log = tmp_path / "log.jsonl"
    recs = [{"iter": 0, "train_loss": 3.0, "val_loss": 3.1, "eval": True}, {"iter": 1, "train_loss": 2.9},
            {"iter": 2, "train_loss": 2.8}, {"iter": 2, "train_loss": 2.7, "val_loss": 2.75, "eval": True}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")
    assert plot_losses(log, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert (tmp_path / "loss.png").read_bytes() == b"png"
    (train_x, train_y), (val_x, val_y, _) = [c.args for c in ax.plot.call_args_list]
    assert (train_x, train_y) == ((1, 2), (2.9, 2.8))
    assert (val_x, val_y) == ((0, 2), (3.1, 2.75))


def test_nonfinite_loss_stops_with_the_iter(data, tmp_path):
    from tinygrad_lm.tensor import is_grad_enabled
    t = _trainer(data, tmp_path / "run")
    forward = t.model.forward

    def poisoned(*args, **kw):  # the training loss of iter 4 (0-based step 4) is NaN
        logits, loss = forward(*args, **kw)
        if t.step == 4 and is_grad_enabled():
            loss = loss * float("nan")
        return logits, loss

    t.model.forward = poisoned
    with pytest.raises(TrainingError, match=r"loss is nan at iter 4") as e:
        t.train()
    assert str(tmp_path / "run") in str(e.value)
    assert t.step == 4
    # the last good checkpoint (the eval at step 3) is intact and resumable
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 3
    assert _trainer(data, tmp_path / "run", resume=True).step == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow in matmul: the point of the test
def test_huge_learning_rate_diverges_into_a_training_error(data, tmp_path):
    t = _trainer(data, tmp_path / "run", learning_rate=1e30, min_lr=0.0, decay_lr=False, grad_clip=0.0,
                 max_iters=20, eval_interval=100, model=dict(MODEL, dropout=0.0))
    with pytest.raises(TrainingError, match=r"at iter \d+"):
        t.train()
    assert 0 < t.step < 20


def test_nonfinite_gradient_norm_stops(data, tmp_path, monkeypatch):
    import tinygrad_lm.train as train_mod
    monkeypatch.setattr(train_mod, "clip_grad_norm", lambda params, max_norm: float("inf"))
    t = _trainer(data, tmp_path / "run", eval_interval=100)
    with pytest.raises(TrainingError, match="gradient norm is inf at iter 0"):
        t.train()


def _interrupt_at(t, steps):
    """Deliver SIGINT (as Ctrl-C would) while the optimizer steps of the given iters run."""
    step = t.train_step

    def wrapped():
        if t.step in steps:
            os.kill(os.getpid(), signal.SIGINT)
        return step()

    t.train_step = wrapped


def test_ctrl_c_saves_the_current_step_and_resumes_exactly(data, tmp_path, uninterrupted):
    messages = []
    t = Trainer(_cfg(data, tmp_path / "run"), dict(MODEL), log=messages.append)
    _interrupt_at(t, {4})
    t.train()  # returns normally: the step in progress finishes, then a checkpoint is saved
    assert t.step == 5
    assert messages[-1] == f"interrupted: checkpoint saved at iter 5 in {tmp_path / 'run'}"
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    assert max(_steps(_log(tmp_path / "run"))) == 5

    resumed = _trainer(data, tmp_path / "run", resume=True)
    resumed.train()
    _assert_same_params(resumed, uninterrupted)
    assert _steps(_log(tmp_path / "run")) == _steps(_log(tmp_path / "full"))


def test_second_ctrl_c_stops_at_once(data, tmp_path):
    t = _trainer(data, tmp_path / "run")
    step = t.train_step

    def twice():  # Ctrl-C, and again before the step in progress is done
        if t.step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step()

    t.train_step = twice
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 3  # the last eval's checkpoint is intact
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_sigint_to_a_training_process(data, tmp_path):
    """A real Ctrl-C to `tinygrad-lm train`: the checkpoint holds the current step, the process
    exits cleanly, and --resume continues from there."""
    out = tmp_path / "run"
    env = dict(os.environ, TINYGRAD_LM_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "tinygrad_lm.cli", "train", "--data", data, "--out", str(out), "--quiet",
           "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "8", "--batch_size", "4",
           "--eval_iters", "1", "--eval_interval", "1000000", "--sample_tokens", "0"]
    proc = subprocess.Popen(cmd + ["--max_iters", "1000000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        log = out / "log.jsonl"
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().strip()):  # the step-0 eval line: the loop runs
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr  # what shells expect after Ctrl-C
    assert "Traceback" not in stderr
    step = load_checkpoint(out)["meta"]["step"]
    assert f"interrupted: checkpoint saved at iter {step} in {out}" in stdout
    assert step < 1000000
    # the truth about what was evaluated (only step 0 here), no "final:" line, no sample
    assert "last evaluation: train loss" in stdout and "(iter 0)" in stdout
    assert "final:" not in stdout and "sample:" not in stdout
    assert f"continue with: tinygrad-lm train --resume --out {out}" in stdout

    res = subprocess.run(cmd + ["--resume", "--max_iters", str(step + 2)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(out)["meta"]["step"] == step + 2


def test_gradient_accumulation_matches_one_big_batch(data, tmp_path):
    """2 micro-batches of B/2 accumulate the same gradient (and so the same update) as one batch
    of B: the loss of each micro-batch is divided by the number of micro-batches."""
    model = dict(MODEL, dropout=0.0)
    # grad_clip=0 and plain numbers: clipping or Adam's normalisation would hide a wrong scale
    kw = dict(eval_interval=100, grad_clip=0.0)
    big = _trainer(data, tmp_path / "big", model=model, batch_size=4, **kw)
    acc = _trainer(data, tmp_path / "acc", model=model, batch_size=2, gradient_accumulation_steps=2, **kw)
    _assert_same_params(big, acc)  # same seed, same init
    x, y = big.data.get_batch("train", 4, 8, np.random.default_rng(0))
    big._batch = lambda split, rng: (x, y)
    halves = iter([(x[:2], y[:2]), (x[2:], y[2:])])
    acc._batch = lambda split, rng: next(halves)
    grads = {}
    for name, t in (("big", big), ("acc", acc)):
        step = t.optimizer.step

        def capture(t=t, name=name, step=step):
            grads[name] = [np.array(p.grad) for p in t.model.parameters()]
            step()

        t.optimizer.step = capture
    loss_big, loss_acc = big.train_step(), acc.train_step()
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    for gb, ga in zip(grads["big"], grads["acc"]):
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-7)
    # Adam's first step is lr * g / (|g| + eps): where g is within float32 rounding of 0 (~1e-9, below
    # eps) the two summation orders move a weight differently by up to lr * 1e-2; the gradients
    # above are the exact check, this one only that both took the same step
    for (k, pb), pa in zip(_params(big).items(), _params(acc).values()):
        np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-4, err_msg=k)
    assert all(p.grad is None or not np.any(np.asarray(p.grad)) for p in acc.model.parameters())  # zeroed


def test_trainer_rejects_a_block_size_larger_than_the_data(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("abcdefghij" * 5)  # 50 chars: val split of 5 tokens
    with pytest.raises(ValueError, match="block_size=8"):
        _trainer(str(p), tmp_path / "run")


def test_trainconfig_defaults_and_field_names():
    c = TrainConfig()
    assert c.device == "cpu" and c.max_iters == 2000
    assert "gradient_accumulation_steps" in TrainConfig.field_names()


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"),
    (dict(eval_interval=0), "eval_interval"),
    (dict(eval_iters=0), "eval_iters"),
    (dict(log_interval=-1), "log_interval"),
    (dict(max_iters=-1), "max_iters"),
    (dict(max_iters=1.5), "max_iters"),
    (dict(warmup_iters=-1), "warmup_iters"),
    (dict(lr_decay_iters=-1), "lr_decay_iters"),
    (dict(sample_tokens=-1), "sample_tokens"),
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(learning_rate="1e-3"), "learning_rate"),
    (dict(min_lr=-1.0), "min_lr"),
    (dict(learning_rate=1e-4, min_lr=1e-3), "min_lr"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(grad_clip=float("nan")), "grad_clip"),
    (dict(beta1=1.0), "beta1"),
    (dict(beta2=-0.1), "beta2"),
    (dict(beta1=float("nan")), "beta1"),
    (dict(beta2="0.9"), "beta2"),
    (dict(tokenizer="wordpiece"), "tokenizer"),
    (dict(bpe_vocab_size=256), "bpe_vocab_size"),
    (dict(device="tpu"), "tpu"),
])
def test_trainconfig_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_trainconfig_accepts_edge_values():
    c = TrainConfig(max_iters=0, warmup_iters=0, sample_tokens=0, learning_rate=0, min_lr=0, grad_clip=0,
                    beta1=0.0, weight_decay=0, device="CPU")
    assert c.device == "cpu"


def test_zero_iterations_evaluates_and_saves(data, tmp_path):
    t = _trainer(data, tmp_path / "run", max_iters=0)
    result = t.train()
    assert set(result) == {"train", "val"} and t.step == 0
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 0


@pytest.mark.parametrize("name", ["tiny", "small", "gpt2"])
def test_presets_are_valid_configs(name):
    from tinygrad_lm.models import GPTConfig
    from tinygrad_lm.presets import get_preset
    p = get_preset(name)
    GPTConfig(**{"vocab_size": 257, **p["model"]})
    assert p["about"]
    c = TrainConfig(**p["train"])
    assert c.lr_decay_iters <= c.max_iters and c.min_lr <= c.learning_rate
    p["model"]["n_layer"] = 99  # a copy: changing it leaves the preset alone
    assert get_preset(name)["model"]["n_layer"] != 99


def test_unknown_preset():
    from tinygrad_lm.presets import get_preset
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        get_preset("huge")


def test_trainer_builds_a_model_for_a_given_batch_source(tmp_path):
    """data= without model=: a new GPT of mcfg's shape, its vocabulary the data's tokenizer's."""
    from tinygrad_lm.data import load_dataset
    from tinygrad_lm.train import TrainConfig, Trainer
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 200)
    data, tok = load_dataset(str(text), tokenizer="char", cache_dir=tmp_path / "cache")
    tcfg = TrainConfig(out_dir=str(tmp_path / "run"), max_iters=1, eval_interval=1, eval_iters=1, batch_size=2,
                       progress=False, sample_tokens=0)
    t = Trainer(tcfg, {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, log=lambda s: None, data=data)
    assert t.model.config.vocab_size == tok.vocab_size and t.tokenizer is data.tokenizer
    assert set(t.train()) == {"train", "val"}
