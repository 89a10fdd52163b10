"""Data-parallel training (tinygrad_lm.distributed): 2 ranks under `mpiexec -n 2` give the losses
and weights of 1 process; errors on one rank stop every rank (no hang); resume restores every
rank. The bucketing and the single-process world are tested in-process.

The mpiexec tests need mpi4py and an mpiexec (the `mpi` extra: mpi4py + the mpich wheel, whose
mpiexec sits beside this Python); they skip without them. Every subprocess runs with one BLAS /
Numba thread, so 1 process and 2 ranks do the same arithmetic per micro-batch."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_lm import cli, distributed
from tinygrad_lm.checkpoint import load_checkpoint
from tinygrad_lm.distributed import World, flatten, make_buckets, unflatten

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 60
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")

# a run through the Python API (the way to train in float64: the model is built, then .double());
# the spec's "fail" injects an error on one rank: in a step, or outside any step ("alone")
WORKER = '''
import json, sys
from tinygrad_lm.data import load_dataset
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.train import TrainConfig, Trainer

spec = json.loads(sys.argv[1])
data, tok = load_dataset(spec["train"]["data"], tokenizer="char")
manual_seed(0)
model = GPT(GPTConfig(**spec["model"], vocab_size=tok.vocab_size))
if spec.get("float64"):
    model = model.double()
trainer = Trainer(TrainConfig(**spec["train"]), model=model, tokenizer=tok, data=data, log=print)
fail = spec.get("fail")
if fail and trainer.world.rank == fail["rank"]:
    if fail["where"] == "alone":
        raise RuntimeError("injected failure outside the loop")
    get_batch = data.get_batch

    def failing(*args):
        if trainer.step == fail["iter"]:
            raise ValueError("injected failure in a step")
        return get_batch(*args)
    data.get_batch = failing
trainer.train()
'''


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's, matching mpi4py), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


if importlib.util.find_spec("mpi4py") is None:
    MPI_MISSING = "mpi4py is not installed (pip install '.[mpi]')"
else:
    MPI_MISSING = None if _mpiexec() else "no mpiexec (pip install '.[mpi]' brings one)"
needs_mpi = pytest.mark.skipif(MPI_MISSING is not None, reason=MPI_MISSING or "")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("distributed")
    (d / "input.txt").write_text(TEXT)
    (d / "worker.py").write_text(WORKER)
    return d


@pytest.fixture(scope="module")
def env(work):
    e = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    e.update(TINYGRAD_LM_CACHE=str(work / "cache"), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
             MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return e


def run(cmd, work, env, ranks=1, timeout=180):
    """Run ``cmd`` as one process or under `mpiexec -n ranks`; a hang is killed (the whole group) and fails."""
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    p = subprocess.Popen([str(c) for c in cmd], cwd=work, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} hung for {timeout} s")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def worker(work, env, out, ranks=1, float64=False, fail=None, **train):
    spec = {"model": dict(n_layer=2, n_head=2, n_embd=16, block_size=16, dropout=0.0),
            "float64": float64, "fail": fail,
            "train": dict(out_dir=str(work / out), data=str(work / "input.txt"), batch_size=4, max_iters=8,
                          eval_interval=4, eval_iters=3, log_interval=1, gradient_accumulation_steps=4,
                          learning_rate=1e-2, warmup_iters=2, lr_decay_iters=8, sample_tokens=0, progress=False,
                          **train)}
    return run([sys.executable, work / "worker.py", json.dumps(spec)], work, env, ranks)


def tlm(work, env, *args, ranks=1):
    return run([sys.executable, "-m", "tinygrad_lm.cli", *args], work, env, ranks)


def ok(res):
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr[-3000:])
    return res


def log(folder):
    return [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]


def assert_same_run(a, b, tol):
    """Same losses (every step and evaluation) and weights (and AdamW state) within ``tol``."""
    la, lb = log(a), log(b)
    assert [r["iter"] for r in la] == [r["iter"] for r in lb]
    for ra, rb in zip(la, lb):
        for key in ("train_loss", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) <= tol, (ra, rb)
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert ca["model"][k].dtype == cb["model"][k].dtype
        np.testing.assert_allclose(ca["model"][k], cb["model"][k], rtol=0, atol=tol, err_msg=k)
    for i, state in ca["optimizer"]["state"].items():
        for k, v in state.items():
            np.testing.assert_allclose(v, cb["optimizer"]["state"][i][k], rtol=0, atol=tol, err_msg=f"{i} {k}")


# ---- in-process: buckets and the one-process world ---------------------------------------------

def test_buckets_keep_order_and_respect_size_and_dtype():
    arrays = [np.zeros(10, np.float32), np.zeros((3, 4), np.float32), np.zeros(5, np.float64),
              np.zeros(2, np.float64), np.zeros(100, np.float64), np.zeros(1, np.float64)]
    buckets = make_buckets(arrays, bucket_bytes=200)
    assert [[id(a) for a in b] for b in buckets] == [[id(arrays[0]), id(arrays[1])], [id(arrays[2]), id(arrays[3])],
                                                     [id(arrays[4])], [id(arrays[5])]]
    assert [a for b in buckets for a in b] == arrays   # every array once, in order
    assert make_buckets([]) == []


def test_flatten_unflatten_round_trip():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,), (2, 3, 2), ()]]
    arrays.append(rng.standard_normal((4, 6)).astype(np.float32)[:, ::2])   # not contiguous
    flat = flatten(arrays)
    assert flat.ndim == 1 and flat.dtype == np.float32 and flat.size == sum(a.size for a in arrays)
    assert np.array_equal(flat, np.concatenate([a.ravel() for a in arrays]))
    copies = [np.zeros_like(a) for a in arrays]
    unflatten(flat, copies)
    for a, c in zip(arrays, copies):
        assert np.array_equal(a, c)
    unflatten(flat * 2, arrays)   # in place, also into a strided view
    assert np.array_equal(flatten(arrays), flat * 2)
    with pytest.raises(ValueError, match="hold 12 values, the flat array 13"):
        unflatten(np.zeros(13, np.float32), [np.zeros((3, 4), np.float32)])


def test_one_process_world_is_a_no_op():
    w = World()
    assert (w.rank, w.size) == (0, 1)
    assert w.shard(5) == range(5)
    values = np.array([1.5, 2.0])
    assert np.array_equal(w.sum(values), values) and w.any(True) and not w.any(False)
    assert w.allgather_json({"a": (1, 2)}) == [{"a": [1, 2]}]
    with pytest.raises(KeyError):   # an error passes through unchanged
        with w.together("testing"):
            raise KeyError("x")


def test_shards_cover_every_item_once():
    for size in (1, 2, 3, 4):
        for n in (1, 3, 4, 7, 8):
            parts = [World.__new__(World) for _ in range(size)]
            for rank, w in enumerate(parts):
                w.rank, w.size = rank, size
            assert [i for w in parts for i in w.shard(n)] == list(range(n))


def test_launched_reads_the_launchers_variables(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not distributed.launched()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.launched()
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched()


def test_without_a_launcher_mpi4py_is_never_imported(work, env):
    code = ("import sys; from tinygrad_lm import distributed as d; w = d.world('cpu'); "
            "assert (w.rank, w.size) == (0, 1); assert 'mpi4py' not in sys.modules; print('ok')")
    assert ok(run([sys.executable, "-c", code], work, env)).stdout.strip() == "ok"


def test_under_a_launcher_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # `import mpi4py` now fails
    with pytest.raises(distributed.DistributedError, match=r"one of 2 processes, but mpi4py is not installed: "
                                                           r"pip install 'tinygrad_lm\[mpi\]'"):
        distributed.world()


def test_commands_that_do_not_run_data_parallel_refuse_under_mpiexec(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert cli.main(["ppo", "--out", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "ppo under mpiexec is not supported yet" in err and "train, finetune, sft, reward, dpo" in err


# ---- under mpiexec -n 2 ---------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_equal_one_process_float64(work, env):
    ok(worker(work, env, "f64-one", float64=True))
    res = ok(worker(work, env, "f64-two", ranks=2, float64=True))
    assert res.stdout.count("data parallel over 2 ranks") == 1
    assert_same_run(work / "f64-one", work / "f64-two", 1e-12)
    assert load_checkpoint(work / "f64-two")["model"]["lm_head.weight"].dtype == np.float64


@needs_mpi
def test_two_ranks_equal_one_process_float32_cli(work, env):
    # no biases: a key bias's gradient is exactly 0 in exact arithmetic (softmax ignores a constant
    # added to every score), so in float32 it is rounding noise, which Adam scales up to the size of
    # a step; another summation order (over ranks) gives other noise there and nowhere else
    args = ["train", "--data", "input.txt", "--n_layer", "2", "--n_head", "2", "--n_embd", "16", "--block_size", "16",
            "--bias", "false", "--batch_size", "4", "--gradient_accumulation_steps", "4", "--max_iters", "8",
            "--eval_interval", "4", "--eval_iters", "3", "--log_interval", "1", "--lr", "1e-2", "--warmup_iters", "2",
            "--dropout", "0", "--sample_tokens", "0", "--quiet"]
    one = ok(tlm(work, env, *args, "--out", "f32-one"))
    two = ok(tlm(work, env, *args, "--out", "f32-two", ranks=2))
    assert_same_run(work / "f32-one", work / "f32-two", 1e-6)
    # rank 0 prints; the rest of its output is one process's
    lines = two.stdout.splitlines()
    assert lines.count("data parallel over 2 ranks: each runs 2 of the 4 micro-batches of a step") == 1
    assert [x for x in lines if "data parallel" not in x] == [x.replace("f32-one", "f32-two")
                                                              for x in one.stdout.splitlines()]
    assert all("allreduce_ms" in r for r in log(work / "f32-two") if not r.get("eval"))


@needs_mpi
def test_accumulation_steps_not_divisible_by_ranks(work, env):
    res = tlm(work, env, "train", "--data", "input.txt", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
              "--block_size", "8", "--gradient_accumulation_steps", "3", "--out", "odd", ranks=2)
    assert res.returncode == 2, (res.stdout, res.stderr)
    errors = [x for x in res.stderr.splitlines() if "error" in x]
    assert errors == ["tinygrad-lm: error: gradient_accumulation_steps (3) must be divisible by the number of "
                      "ranks (2): each rank runs an equal share of a step's micro-batches (e.g. 4)"]


@needs_mpi
def test_a_rank_failing_in_a_step_stops_every_rank(work, env):
    res = worker(work, env, "fails", ranks=2, fail={"rank": 1, "iter": 2, "where": "step"})
    assert res.returncode != 0
    # rank 1 raises its own error; rank 0 raises RankFailed naming rank 1 and its error
    assert "ValueError: injected failure in a step" in res.stderr
    assert "RankFailed: rank 1 failed at iter 2: ValueError: injected failure in a step; rank 0 stops too" in res.stderr
    assert [r["iter"] for r in log(work / "fails")][-1] == 2   # steps 1 and 2 were logged, then it stopped


@needs_mpi
def test_a_rank_failing_alone_aborts_the_job(work, env):
    # outside any step the others cannot know: the failing rank prints, then MPI_Abort ends every rank
    res = worker(work, env, "alone", ranks=2, fail={"rank": 1, "where": "alone"})
    assert res.returncode != 0
    assert "RuntimeError: injected failure outside the loop" in res.stderr
    assert "rank 1 of 2 failed alone: aborting every rank (MPI_Abort)" in res.stderr


@needs_mpi
def test_resume_under_two_ranks_equals_the_uninterrupted_run(work, env):
    # dropout on: every rank's own dropout stream must come back from the checkpoint
    args = ["train", "--data", "input.txt", "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16",
            "--batch_size", "4", "--gradient_accumulation_steps", "2", "--eval_interval", "2", "--eval_iters", "3",
            "--log_interval", "1", "--lr", "1e-2", "--warmup_iters", "2", "--lr_decay_iters", "8", "--dropout", "0.2",
            "--sample_tokens", "0", "--quiet"]
    ok(tlm(work, env, *args, "--max_iters", "8", "--out", "whole", ranks=2))
    ok(tlm(work, env, *args, "--max_iters", "4", "--out", "halves", ranks=2))
    rngs = load_checkpoint(work / "halves")["meta"]["rank_rngs"]
    assert len(rngs) == 2 and rngs[0] != rngs[1]
    res = ok(tlm(work, env, "train", "--resume", "--max_iters", "8", "--out", "halves", "--quiet", ranks=2))
    assert "resuming from iter 4" in res.stdout
    assert_same_run(work / "whole", work / "halves", 0.0)
