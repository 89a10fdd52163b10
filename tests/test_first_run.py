"""A new user's first hour with `tinygrad-lm`: nothing is overwritten without being asked,
progress and reports tell the truth, and the CLI explains itself (--help, --version, errors
that say what to do). The install-then-editable sequence is tests/test_install.py."""
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tinygrad_lm import __version__, cli
from tinygrad_lm.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs!\n" * 30
SMALL = ("--data", "input.txt", "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "8",
         "--batch_size", "4", "--eval_iters", "1", "--sample_tokens", "0", "--quiet")
ERROR = "tinygrad-lm: error:"


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    """cli.main in a fresh folder holding input.txt; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "input.txt").write_text(TEXT)

    def call(*args):
        code = cli.main([str(a) for a in args])
        return code, *capsys.readouterr()

    return call


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), err
    return lines[0]


def _subprocess(args, cwd, env_extra=None, merge=False):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tinygrad_lm.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=not merge, stdout=subprocess.PIPE if merge else None,
                          stderr=subprocess.STDOUT if merge else None, text=True, timeout=300)


# ---- 2. never destroy a run without being asked -----------------------------------------------

def test_training_into_a_folder_with_a_run_refuses_and_keeps_it(main, tmp_path):
    assert main("train", *SMALL, "--max_iters", 4, "--eval_interval", 2, "--out", "run")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    code, out, err = main("train", *SMALL, "--max_iters", 2, "--out", "run")
    assert code == 2 and out == ""
    line = _one_error_line(err)
    for part in ("run already holds a training run", "ckpt.safetensors at iter 4", "--resume", "--overwrite",
                 "--out"):
        assert part in line, (part, line)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing lost


def test_a_log_alone_also_counts_as_a_run(main, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"iter": 0}\n')
    code, _, err = main("train", *SMALL, "--max_iters", 1, "--out", "run")
    assert code == 2 and "log.jsonl" in _one_error_line(err)


def test_overwrite_starts_over(main, tmp_path):
    assert main("train", *SMALL, "--max_iters", 4, "--eval_interval", 2, "--out", "run")[0] == 0
    code, out, err = main("train", *SMALL, "--max_iters", 1, "--eval_interval", 1, "--out", "run", "--overwrite")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert max(r["iter"] for r in log) == 1  # nothing of the old run's log is left


def test_resume_and_overwrite_together_is_an_error(main, tmp_path):
    code, out, err = main("train", *SMALL, "--out", "run", "--resume", "--overwrite")
    assert code == 2 and "not allowed with argument" in _one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_default_run_folder_is_never_reused(main, tmp_path):
    """No --out: out/, then out-2/, out-3/ (said on stdout); --resume continues the newest."""
    code, out, _ = main("train", *SMALL, "--max_iters", 1)
    assert code == 0 and out.rstrip().endswith(f"checkpoint: {Path('out/ckpt.safetensors')}")
    for n in (2, 3):
        code, out, _ = main("train", *SMALL, "--max_iters", 1)
        assert code == 0
        assert out.startswith(f"out/ holds an earlier run; this one goes to out-{n}/")
        assert out.rstrip().endswith(f"checkpoint: {Path(f'out-{n}/ckpt.safetensors')}")
    code, out, err = main("train", "--resume", "--max_iters", 2, "--quiet", "--sample_tokens", 0)
    assert code == 0, err
    assert f"resuming from iter 1 ({Path('out-3/ckpt.safetensors')})" in out
    assert load_checkpoint(tmp_path / "out-3")["meta"]["step"] == 2
    assert load_checkpoint(tmp_path / "out")["meta"]["step"] == 1


def test_resume_from_another_folder_finds_the_relative_data_path(main, tmp_path, monkeypatch):
    assert main("train", *SMALL, "--max_iters", 1, "--out", "run")[0] == 0  # --data input.txt, relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = main("train", "--resume", "--out", tmp_path / "run", "--max_iters", 2, "--quiet")
    assert code == 0, err
    assert f"data: {tmp_path / 'input.txt'}" in out
    assert load_checkpoint(tmp_path / "run")["meta"]["step"] == 2


# ---- 3 and 4. honest reports, printed through the progress bar --------------------------------

def test_evaluation_lines_are_never_glued_to_the_progress_bar(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT)
    args = [a for a in SMALL if a != "--quiet"]
    res = _subprocess(["train", *args, "--max_iters", 4, "--eval_interval", 2, "--out", "run"], tmp_path,
                      {"TINYGRAD_LM_CACHE": str(tmp_path / "cache")}, merge=True)
    assert res.returncode == 0, res.stdout
    assert "it/s" in res.stdout or "s/it" in res.stdout  # the bar was drawn (in the same stream)
    pieces = re.split(r"[\r\n]", res.stdout)  # what a terminal shows as separate lines
    for step in (0, 2, 4):
        hits = [p for p in pieces if f"step {step}: train loss" in p]
        assert hits and all(p.startswith(f"step {step}:") for p in hits), hits


def test_resume_says_where_it_starts_and_eval_shows_progress(main, tmp_path):
    assert main("train", *SMALL, "--max_iters", 2, "--eval_interval", 2, "--out", "run")[0] == 0
    code, out, err = main("train", "--resume", "--out", "run", "--max_iters", 3, "--quiet")
    assert code == 0, err
    assert f"resuming from iter 2 ({Path('run/ckpt.safetensors')})" in out
    code, out, err = main("eval", "--ckpt", "run", "--data", "input.txt")
    assert code == 0, err
    assert "eval val" in err and "100%" in err  # a bar instead of silence
    assert out.split()[:5] == ["model", "tokens", "loss", "perplexity", "bits/byte"]
    code, out, err = main("eval", "--ckpt", "run", "--data", "input.txt", "--quiet")
    assert code == 0 and err == ""


def test_the_first_run_says_kernels_are_being_compiled(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT)
    env = {"TINYGRAD_LM_CACHE": str(tmp_path / "cache"), "NUMBA_CACHE_DIR": str(tmp_path / "kernels")}
    note = "compiling the CPU kernels: first run only, about 15 s"
    first = _subprocess(["train", *SMALL, "--max_iters", 1, "--out", "a"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert note in first.stderr and str(tmp_path / "kernels") in first.stderr
    again = _subprocess(["train", *SMALL, "--max_iters", 1, "--out", "b"], tmp_path, env)
    assert again.returncode == 0 and note not in again.stderr, again.stderr


# ---- 5. a corrupt checkpoint never suggests unpickling -------------------------------------------

def test_a_pickle_posing_as_a_checkpoint(main, tmp_path):
    import pickle
    (tmp_path / "ckpt.npz").write_bytes(pickle.dumps({"weights": [1.0]}))
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    for path in ("ckpt.npz", "objects.npz"):
        code, out, err = main("generate", "--ckpt", path)
        line = _one_error_line(err)
        assert code == 2 and "is not a tinygrad_lm checkpoint" in line and path in line
        assert "allow_pickle" not in line and "unsafe" not in line


# ---- 6. a CLI that explains itself ---------------------------------------------------------------

def test_help_shows_every_default_and_allowed_values(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    for fragment in ("--pos {learned,rope,sinusoidal}", "--norm {layernorm,rmsnorm}",
                     "--mlp {gelu,gelu_tanh,swiglu}", "--tokenizer {char,byte,bpe}", "--preset {tiny,small,gpt2}",
                     "context length in tokens (default: 64)", "--learning_rate X, --learning-rate X, --lr X",
                     "(default: 1337)", "--overwrite", "GPT-2 124M"):
        assert fragment in flat, fragment
    assert {f.name for f in cli._config_flags()} == set(cli.FIELD_HELP), "one line of help for every field"
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    formatter = cli.HelpFormatter("tinygrad-lm")
    for action in train._actions:
        if action.option_strings and action.nargs != 0:  # every option that takes a value...
            assert "default:" in formatter._get_help_string(action), action.option_strings  # ...shows it


def test_options_without_a_command_are_trains(main, tmp_path):
    code, out, err = main(*SMALL, "--max_iters", 1, "--out", "r")  # `tinygrad-lm --data ... --max_iters 1`
    assert code == 0, err
    assert load_checkpoint(tmp_path / "r")["meta"]["step"] == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert capsys.readouterr().out == f"tinygrad-lm {__version__}\n"
    assert __version__ == pyproject["project"]["version"]


def test_lr_alias_and_equals_syntax_and_no_prefix_matching(main, tmp_path):
    code, _, err = main("train", *SMALL, "--max_iters=1", "--lr", "0.005", "--min_lr=0.0001", "--out", "r")
    assert code == 0, err
    saved = load_checkpoint(tmp_path / "r")["meta"]["train_config"]
    assert saved["learning_rate"] == 0.005 and saved["max_iters"] == 1 and saved["min_lr"] == 0.0001
    for abbreviated in ("--learn", "--max_it", "--n_lay", "--overwr", "--res"):
        code, _, err = main("train", *SMALL, abbreviated, "1", "--out", "r2")
        assert code == 2 and f"unrecognized arguments: {abbreviated}" in _one_error_line(err)
    assert not (tmp_path / "r2").exists()


# ---- 7. unknown characters: say what to do -------------------------------------------------------

def test_unknown_characters_say_what_to_do(main):
    assert main("train", *SMALL, "--max_iters", 0, "--out", "run")[0] == 0
    code, out, err = main("generate", "--ckpt", "run", "--prompt", "Zürich")
    line = _one_error_line(err)
    assert code == 2 and out == ""
    assert "'Z'" in line and "'ü'" in line and "--tokenizer byte" in line


# ---- 8, 9, 10. README and presets ----------------------------------------------------------------

def test_gpt2_preset_is_the_124m_shape(main):
    code, out, err = main("info", "--preset", "gpt2")
    assert code == 0, err
    assert "parameters: 124,439,808" in out and "vocab_size=50257" in out


def _readme_commands(tool: str) -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)  # the commands to type (not synopses)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&| \| ", line):
                words = shlex.split(part.strip().lstrip("$ "), comments=True) if part.strip() else []
                while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                    words = words[1:]
                if words and Path(words[0]).name == tool:
                    cmds.append(words[1:])
    return cmds


def test_readme_installs_extras_without_undoing_an_editable_install():
    """`pip install '.[x]'` after `pip install -e .` replaces the editable install."""
    pips = [c for c in _readme_commands("pip") if c and c[0] == "install"]
    assert pips
    for cmd in pips:
        targets = [w for w in cmd if w.startswith(".")]
        if any("[" in t for t in targets):
            assert "-e" in cmd, cmd
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(d.startswith("matplotlib") for d in dev)  # the tests make the loss plot


def test_every_readme_command_parses():
    """The README's `tinygrad-lm ...` lines (the Shakespeare recipe among them) use real options."""
    cmds = _readme_commands("tinygrad-lm")
    assert any("--data" in c and any("shakespeare" in w for w in c) for c in cmds), "the Shakespeare recipe"
    parser = cli.build_parser()
    for cmd in cmds:
        if cmd and cmd[0] in ("--help", "--version"):
            continue
        try:
            parser.parse_args(cmd or ["train"])
        except cli.UsageError as e:
            pytest.fail(f"README command `tinygrad-lm {' '.join(cmd)}`: {e}")
