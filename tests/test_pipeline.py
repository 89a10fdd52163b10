"""`tinygrad-lm pipeline` (pre-train -> SFT -> reward -> PPO and DPO -> report card) at the smoke
preset's tiny sizes, the report card's metric helpers (align.report) on hand-made cases, and
`train --chat-tokens`."""
import json

import numpy as np
import pytest

from tinygrad_lm.align.report import COLUMNS, exact_match, reply_rows, rows_token_logprobs, sampled_kl, win_rate
from tinygrad_lm.align.sft import IGNORE
from tinygrad_lm.cli import COMMANDS, build_parser, main
from tinygrad_lm.cli.common import load_model
from tinygrad_lm.cli.pipeline import CHAT_STAGES, STAGES, stage_commands


# ---- metric helpers ---------------------------------------------------------------------------------

def test_win_rate_counts_a_tie_half():
    prompts = ["Reverse the word: abc", "What is 2 + 3?", "How many letters are in: abcd", "Uppercase: abc cde"]
    mine = ["cba", "6", "4", "ABC CDE"]        # win (right vs wrong), loss (6 vs 5), tie, tie
    base = ["abc", "5", "4", "ABC CDE"]
    assert win_rate(prompts, mine, base) == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert win_rate(prompts, base, mine) == pytest.approx(1 - (1 + 0 + 0.5 + 0.5) / 4)
    assert win_rate(prompts, base, base) == 0.5          # any model against itself
    with pytest.raises(ValueError, match="3 baseline replies"):
        win_rate(prompts, mine, base[:3])


def test_win_rate_prefers_closer_then_shorter():
    p = "Reverse the word: abcdef"                       # answer fedcba
    assert win_rate([p], ["fedcbx"], ["fxxxxx"]) == 1.0   # both wrong: closer wins
    assert win_rate([p], ["fedcbx"], ["fedcbx "]) == 1.0  # equally close: shorter wins


def test_exact_match_per_family_and_overall():
    prompts = ["Reverse the word: abc", "Reverse the word: xyz", "What is 2 + 3?", "Sort the letters of: cba"]
    s = exact_match(prompts, ["cba", "xyz", " 5\n", "abc"])
    assert s == {"reverse": 0.5, "add": 1.0, "sort": 1.0, "all": 0.75, "n": 4}
    with pytest.raises(ValueError, match="2 prompts and 1 replies"):
        exact_match(prompts[:2], ["cba"])


@pytest.fixture(scope="module")
def chat_model(chat_base):
    return load_model_from_base(chat_base)


def load_model_from_base(chat_base):
    from tinygrad_lm.cli.common import load_source
    return load_source(None, str(chat_base / "base"), "cpu")


def test_greedy_replies_scored_as_eval_task_builtin_scores_them(chat_model):
    from tinygrad_lm.align.evaluate import task_accuracy
    from tinygrad_lm.align.report import greedy_replies
    from tinygrad_lm.align.tasks import task_split
    model, tok = chat_model
    examples = task_split("test", 5)
    prompts = [e["prompt"] for e in examples]
    assert exact_match(prompts, greedy_replies(model, tok, prompts, 8)) == task_accuracy(model, tok, examples, 8)


def test_reply_rows_score_the_reply_tokens_only():
    x, y = reply_rows([([1, 2, 3], [7, 8]), ([4, 5], [9])])
    assert x.tolist() == [[1, 2, 3, 7], [4, 5, 0, 0]]
    assert y.tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 9, IGNORE, IGNORE]]


def test_kl_of_a_model_to_itself_is_zero(chat_model, chat_base):
    model, tok = chat_model
    prompts = ["What is 2 + 3?", "Reverse the word: abc", "Uppercase: abc cde", "How many letters are in: qwe"]
    same = sampled_kl(model, model, tok, prompts, max_new_tokens=6, seed=1)
    assert same == {"kl": 0.0, "kl_sem": 0.0, "tokens": same["tokens"]} and 1 <= same["tokens"] <= 6
    other, _ = load_model_from_base(chat_base)
    rng = np.random.default_rng(0)
    for p in other.parameters():                          # another policy: the same weights, moved
        p.data[...] = p.data + 0.5 * rng.standard_normal(p.shape).astype(p.data.dtype)
    x, y = reply_rows([(tok.encode("ab"), tok.encode("cd")), (tok.encode("e"), tok.encode("fgh"))])
    lp, lq = rows_token_logprobs(other, x, y), rows_token_logprobs(model, x, y)
    assert (lp[y == IGNORE] == 0).all() and (lp[y != IGNORE] < 0).all() and not np.allclose(lp, lq)
    assert sampled_kl(other, model, tok, prompts, max_new_tokens=6, seed=1)["kl"] != 0.0


# ---- train --chat-tokens ------------------------------------------------------------------------------

def test_train_chat_tokens_gives_a_chat_ready_tokenizer(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text("hello world, a small text to train on. " * 200)
    rc = main(["train", "--data", str(data), "--tokenizer", "byte", "--chat-tokens", "--out", str(tmp_path / "r"),
               "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32", "--max_iters", "2",
               "--batch_size", "2", "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0", "--quiet"])
    assert rc == 0
    model, tok, _ = load_model(tmp_path / "r", "cpu")
    assert tok.special_tokens == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert model.config.vocab_size == tok.vocab_size == 259
    rc = main(["train", "--data", str(data), "--tokenizer", "char", "--chat-tokens", "--out", str(tmp_path / "c")])
    assert rc == 2 and "a char tokenizer has no special tokens" in capsys.readouterr().err


def test_train_chat_tokens_with_bpe(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("the cat sat on the mat with another cat. " * 100)
    rc = main(["train", "--data", str(data), "--tokenizer", "bpe", "--vocab_size", "280", "--chat-tokens",
               "--out", str(tmp_path / "r"), "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32",
               "--max_iters", "1", "--batch_size", "2", "--eval_interval", "1", "--eval_iters", "1",
               "--sample_tokens", "0", "--quiet"])
    assert rc == 0
    model, tok, _ = load_model(tmp_path / "r", "cpu")
    ids = {s: tok.token_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    eot = ids["<|endoftext|>"]                             # the BPE's own special, then ChatML's two after it
    assert (ids["<|im_start|>"], ids["<|im_end|>"]) == (eot + 1, eot + 2)
    assert model.config.vocab_size == tok.vocab_size == eot + 3
    assert tok.encode("<|im_start|>user\nhi<|im_end|>", allowed_special="all")[0] == ids["<|im_start|>"]


# ---- the pipeline ---------------------------------------------------------------------------------------

def test_stage_commands_are_commands_a_user_types(tmp_path):
    cmds = stage_commands(str(tmp_path), "full")
    assert list(cmds) == list(STAGES)
    assert cmds["pretrain"][:4] == ["train", "--tokenizer", "byte", "--chat-tokens"]
    assert cmds["sft"][cmds["sft"].index("--ckpt") + 1] == str(tmp_path / "pretrain")
    for argv in cmds.values():
        if argv[0] in COMMANDS:          # ppo: once its command exists
            build_parser().parse_args(argv)   # every flag is one the command has (else UsageError)


def test_pipeline_smoke(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["pipeline", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    for stage in STAGES:
        if stage == "ppo" and "ppo" not in COMMANDS:
            continue
        model, tok, _ = load_model(out / stage, "cpu")     # what chat / eval / generate --ckpt load
        assert model.config.vocab_size == tok.vocab_size
    report = json.loads((out / "report.json").read_text())
    ran = [s for s in CHAT_STAGES if report["status"][s] != "skipped"]
    assert set(report["rows"]) == set(ran) and {"pretrain", "sft", "dpo"} <= set(ran)
    for row in report["rows"].values():
        assert set(COLUMNS) - {"reverse", "sort", "uppercase", "add", "count"} <= set(row)
    assert report["rows"]["sft"]["win_rate"] == 0.5 and report["rows"]["sft"]["kl"] == 0.0
    md = (out / "report.md").read_text()
    for header in ("| stage |", "RM score", "win vs SFT", "KL to SFT", "tinygrad-lm train --tokenizer byte"):
        assert header in md
    # a second run keeps every stage made by the same command, and writes the report again
    capsys.readouterr()
    assert main(["pipeline", "--preset", "smoke", "--out", str(out), "--quiet", "--test-prompts", "3"]) == 0
    printed = capsys.readouterr().out
    assert "[pretrain] kept" in printed and "[dpo] kept" in printed
    assert json.loads((out / "report.json").read_text())["test_prompts"] == 3


def test_pipeline_leaves_a_run_it_did_not_make_alone(tmp_path, capsys):
    foreign = tmp_path / "p" / "pretrain"
    foreign.mkdir(parents=True)
    (foreign / "log.jsonl").write_text("{}\n")           # someone's run, not recorded in pipeline.json
    assert main(["pipeline", "--preset", "smoke", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "the pretrain stage stopped (exit code 2)" in err
    assert (foreign / "log.jsonl").read_text() == "{}\n"
    assert main(["pipeline", "--preset", "smoke", "--out", str(tmp_path / "q"), "--test-prompts", "0"]) == 2
    assert "--test-prompts must be a positive integer, got 0" in capsys.readouterr().err
