"""`tinygrad-lm pipeline`: the whole RLHF story in one command, on the built-in task:

    pretrain (train, byte tokenizer with ChatML's tokens) -> sft -> reward -> ppo and dpo

Each stage is the command a user would type (run through ``cli.main``, so exactly that code path),
leaving DIR/pretrain, DIR/sft, DIR/reward, DIR/ppo and DIR/dpo, each a run folder that `chat`,
`generate` and `eval` load with --ckpt. Then every chat model is scored on the built-in task's test
prompts (align.report) and the report card is written: DIR/report.md (the commands, one table,
each stage's loss curve) and DIR/report.json (the same numbers).

A second run in the same DIR keeps each stage that was finished by the same command (recorded in
DIR/pipeline.json) and whose inputs were kept too, so an interrupted pipeline, or one run again
after a change to a later stage, does only what is left; --overwrite starts every stage over."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from ..align.evaluate import MAX_NEW_TOKENS
from .common import PROG, UsageError

STAGES = ("pretrain", "sft", "reward", "ppo", "dpo")
DEPENDS = {"pretrain": (), "sft": ("pretrain",), "reward": ("sft",), "ppo": ("sft", "reward"),
           "dpo": ("sft", "reward")}
CHAT_STAGES = ("pretrain", "sft", "ppo", "dpo")   # the table's rows: the models that answer
RECORD_NAME = "pipeline.json"


class StageFailed(Exception):
    """A stage's command exited with ``rc`` (it has said why): the pipeline stops with the same code."""

    def __init__(self, message: str, rc: int):
        super().__init__(message)
        self.rc = rc

# Sizes and step counts per preset, as the flags of each stage's command. "full" fits 30 minutes on
# a 2-core CPU, "quick" (--quick) 5; "smoke" takes seconds and only proves the plumbing (tests).
# The model: 4 layers x 128 wide, context 128 (a conversation of the task is at most ~105 byte
# tokens). SFT at 1e-3 (fine-tuning's 1e-4 default is for models that already know a task; this one
# learns the task's copying from scratch); the reward model at 3e-4 (1e-3 overfits its pairs).
MODEL = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "128"]
PRESETS = {
    "full": dict(
        about="16 min measured on 2 CPU cores (up to 30 when other work shares them)",
        pretrain=MODEL + ["--max_iters", "1000", "--batch_size", "16", "--eval_interval", "250", "--eval_iters", "10"],
        sft=["--max_iters", "1000", "--learning_rate", "1e-3", "--batch_size", "16", "--seq_len", "127",
             "--eval_interval", "250", "--eval_iters", "5", "--task-size", "4000"],
        reward=["--max_iters", "200", "--learning_rate", "3e-4", "--batch_size", "16", "--seq_len", "127",
                "--eval_interval", "50", "--eval_iters", "5", "--task-size", "1500"],
        ppo=["--max_iters", "480", "--rollout-batch", "64", "--ppo-epochs", "2", "--batch_size", "16",
             "--seq_len", "127", "--eval_interval", "80"],
        dpo=["--max_iters", "150", "--batch_size", "8", "--seq_len", "127", "--eval_interval", "50",
             "--eval_iters", "5"],
        test_prompts=200),
    "quick": dict(
        about="2.6 min measured on 2 CPU cores (a small model, weak SFT: a demo of the plumbing)",
        pretrain=MODEL + ["--max_iters", "300", "--batch_size", "16", "--eval_interval", "100", "--eval_iters", "5"],
        sft=["--max_iters", "300", "--learning_rate", "1e-3", "--batch_size", "16", "--seq_len", "127",
             "--eval_interval", "100", "--eval_iters", "3", "--task-size", "2000"],
        reward=["--max_iters", "60", "--learning_rate", "3e-4", "--batch_size", "16", "--seq_len", "127",
                "--eval_interval", "30", "--eval_iters", "3", "--task-size", "300"],
        ppo=["--max_iters", "80", "--rollout-batch", "32", "--ppo-epochs", "2", "--batch_size", "16",
             "--seq_len", "127", "--eval_interval", "40"],
        dpo=["--max_iters", "40", "--batch_size", "8", "--seq_len", "127", "--eval_interval", "20",
             "--eval_iters", "3"],
        test_prompts=50),
    "smoke": dict(
        about="seconds: a 1-layer model and a few steps, to prove the plumbing (tests)",
        pretrain=["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "128", "--max_iters", "4",
                  "--batch_size", "2", "--eval_interval", "2", "--eval_iters", "1"],
        sft=["--max_iters", "3", "--batch_size", "2", "--seq_len", "127", "--eval_interval", "3", "--eval_iters", "1",
             "--task-size", "20"],
        reward=["--max_iters", "2", "--batch_size", "2", "--seq_len", "127", "--eval_interval", "2",
                "--eval_iters", "1", "--task-size", "8", "--max-new-tokens", "8"],
        ppo=["--max_iters", "1", "--rollout-batch", "2", "--ppo-epochs", "1", "--batch_size", "2", "--seq_len", "127",
             "--eval_interval", "1", "--eval-prompts", "2", "--max-new-tokens", "8"],
        dpo=["--max_iters", "2", "--batch_size", "2", "--seq_len", "127", "--eval_interval", "2", "--eval_iters", "1"],
        test_prompts=5, max_new_tokens=8),
}


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="pre-train -> SFT -> reward model -> PPO and DPO on the built-in task, "
                                        "with a report card",
                       description="Pre-train a small GPT, instruction-tune it, train a reward model, align it "
                                   "with PPO and with DPO, then score every stage on the built-in task's test "
                                   "prompts: DIR/report.md and DIR/report.json.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the stages' runs and the report")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the short version: --preset quick")
    size.add_argument("--preset", choices=tuple(PRESETS), default="full",
                      help="sizes and steps: " + "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()))
    p.add_argument("--overwrite", action="store_true", help="start every stage over, even those already done")
    p.add_argument("--test-prompts", "--test_prompts", dest="test_prompts", type=int, default=None, metavar="N",
                   help="test prompts the report scores (default: the preset's)")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train and evaluate")
    p.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of every stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars in the stages")


def stage_commands(out: str, preset: str, device: str = "cpu", seed: int = 1337, quiet: bool = False) -> dict:
    """{stage: argv} of the five stages' commands (without the program name), as a user would type them."""
    if preset not in PRESETS:
        raise UsageError(f"unknown pipeline preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg, d = PRESETS[preset], Path(out)
    common = ["--device", device, "--seed", str(seed)] + (["--quiet"] if quiet else [])
    return {
        "pretrain": ["train", "--tokenizer", "byte", "--chat-tokens", "--out", str(d / "pretrain"),
                     "--sample_tokens", "0", *cfg["pretrain"], *common],
        "sft": ["sft", "--ckpt", str(d / "pretrain"), "--task", "builtin", "--method", "full", "--out", str(d / "sft"),
                *cfg["sft"], *common],
        "reward": ["reward", "--base", str(d / "sft"), "--task", "builtin", "--method", "full",
                   "--out", str(d / "reward"), *cfg["reward"], *common],
        "ppo": ["ppo", "--policy", str(d / "sft"), "--reward", str(d / "reward"), "--task", "builtin",
                "--method", "full", "--out", str(d / "ppo"), *cfg["ppo"], *common],
        # DPO learns from the very pairs the reward model learned from: the SFT model's own replies,
        # ranked by the scripted judge (with the true answer over a wrong reply where they teach nothing)
        "dpo": ["dpo", "--policy", str(d / "sft"), "--data", str(d / "reward" / "pairs.jsonl"), "--method", "full",
                "--out", str(d / "dpo"), *cfg["dpo"], *common],
    }


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) and isinstance(record.get("stages"), dict) else {"stages": {}}
    except (OSError, ValueError):
        return {"stages": {}}


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def run_stages(out: Path, commands: dict, overwrite: bool = False, log=print) -> dict:
    """Run each stage's command in order through ``cli.main``; {stage: {"command", "seconds", "status"}}
    with status "ran", "kept" (done before by the same command, its inputs kept too) or "skipped"
    (its command does not exist in this version). A stage that fails stops the pipeline: StageFailed
    naming it, its exit code and its command."""
    from . import COMMANDS, main
    from ..train import existing_run
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / RECORD_NAME
    record = {"stages": {}} if overwrite else _read_record(record_path)
    done, ran = {}, set()
    for stage in STAGES:
        argv, folder = commands[stage], out / stage
        shown = f"{PROG} {shlex.join(argv)}"
        before = record["stages"].get(stage)
        if argv[0] not in COMMANDS:
            log(f"[{stage}] skipped: this version of {PROG} has no `{argv[0]}` command yet (would run: {shown})")
            done[stage] = {"command": argv, "seconds": 0.0, "status": "skipped"}
            continue
        if (before and before.get("command") == argv and existing_run(folder)
                and not any(dep in ran for dep in DEPENDS[stage])):
            log(f"[{stage}] kept: {folder} was made by this same command ({before['seconds']:.0f} s)")
            done[stage] = {**before, "status": "kept"}
            continue
        # the pipeline owns the stage folders it recorded: a stale one is replaced; any other run
        # there is left to the command's own refusal (RunExistsError) unless --overwrite
        replace = overwrite or (before is not None and existing_run(folder))
        log(f"[{stage}] {shown}")
        start = time.perf_counter()
        rc = main(argv + (["--overwrite"] if replace else []))
        seconds = time.perf_counter() - start
        if rc != 0:
            raise StageFailed(f"the {stage} stage stopped (exit code {rc}) after {seconds:.0f} s; its command: {shown}"
                              + ("; run the pipeline again to go on from there" if rc == 130 else ""), rc)
        done[stage] = {"command": argv, "seconds": seconds, "status": "ran"}
        ran.add(stage)
        record["stages"][stage] = {"command": argv, "seconds": seconds}
        _write_record(record_path, record)
        log(f"[{stage}] done in {seconds:.0f} s")
    return done


def evaluate_stages(out: Path, stages: dict, n_prompts: int, device: str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS,
                    seed: int = 0, log=print) -> dict:
    """The table's numbers: {stage: {family..., "all", "reward", "win_rate", "kl", ...}} for each chat
    stage that has a run, on the first ``n_prompts`` test prompts of the built-in task (the ones
    `eval --task builtin --task-size N` scores), plus a few example replies."""
    from ..align.report import exact_match, greedy_replies, sampled_kl, win_rate
    from ..align.tasks import FAMILIES, task_split
    from .common import load_model
    from .reward import load_reward_model
    prompts = [e["prompt"] for e in task_split("test", n_prompts)]
    reward_model, _, _ = load_reward_model(out / "reward", device)
    sft, tok, _ = load_model(out / "sft", device)
    sft_replies = greedy_replies(sft, tok, prompts, max_new_tokens)
    examples = prompts[:len(FAMILIES)]      # task_split takes the families in turn: one prompt of each
    rows, replies_of = {}, {}
    for stage in CHAT_STAGES:
        if stages.get(stage, {}).get("status") == "skipped":
            continue
        start = time.perf_counter()
        model, stage_tok, _ = (sft, tok, None) if stage == "sft" else load_model(out / stage, device)
        if stage_tok.to_dict() != tok.to_dict():   # the reward model and the KL read its replies with SFT's
            raise UsageError(f"{out / stage} has another tokenizer than {out / 'sft'}: not a stage of this pipeline")
        replies = sft_replies if stage == "sft" else greedy_replies(model, tok, prompts, max_new_tokens)
        row = exact_match(prompts, replies)
        row["reward"] = float(reward_model.score_replies(tok, prompts, replies).mean())
        row["win_rate"] = win_rate(prompts, replies, sft_replies)
        row.update(sampled_kl(model, sft, tok, prompts, max_new_tokens=max_new_tokens, seed=seed))
        row["seconds"] = time.perf_counter() - start
        rows[stage], replies_of[stage] = row, replies
        log(f"[report] {stage}: exact match {row['all']:.1%}, reward {row['reward']:+.3f}, "
            f"win rate vs sft {row['win_rate']:.1%}, KL to sft {row['kl']:.3f} ({row['seconds']:.0f} s)")
    samples = [{"prompt": p, **{s: replies_of[s][i] for s in replies_of}} for i, p in enumerate(examples)]
    return {"rows": rows, "examples": samples, "test_prompts": len(prompts)}


CORPUS_NOTE = ("Pre-training reads the built-in corpus (the Python standard library's source, 4 MB): what a "
               "user gets from `tinygrad-lm train` with no --data, and text that has never seen the task. The task "
               "needs letters, digits and copying, which source code is full of, so the pre-trained model brings "
               "byte-level spelling and copying to SFT, and every task skill in the table is learnt by SFT and "
               "after, not leaked from pre-training.")
COLUMN_NOTES = """- reverse ... count, all: exact match of greedy replies (`tinygrad-lm eval --ckpt DIR/STAGE --task builtin
  --task-size N` gives the same numbers), per family and over all test prompts.
- RM score: the mean score the reward model (DIR/reward) gives those replies.
- win vs SFT: the scripted judge (correct first, then closer to the answer by edit distance, then
  shorter) on the stage's greedy reply against the SFT model's, prompt by prompt; a tie counts half,
  so SFT against itself is 50% by construction.
- KL to SFT: KL(pi || pi_sft) estimated from one reply per prompt sampled from the stage's model at
  temperature 1: the sum over its tokens of log pi - log pi_sft (through the end-of-turn token),
  averaged over prompts (an unbiased estimate: it can come out a little below 0; SFT's own is 0)."""


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_report(out: Path, preset: str, stages: dict, scores: dict, times: dict) -> tuple[Path, Path]:
    """DIR/report.md (commands, the table, loss curves, times) and DIR/report.json (the same numbers)."""
    from ..align.report import markdown_table
    rows = scores["rows"]
    reward_eval, dpo_eval = _json_or_none(out / "reward" / "reward_eval.json"), _json_or_none(out / "dpo" / "dpo_eval.json")
    ppo_eval = _json_or_none(out / "ppo" / "ppo_eval.json")
    sft = rows.get("sft")
    targets = {}
    for stage in ("ppo", "dpo"):
        r = rows.get(stage)
        targets[stage] = None if r is None or sft is None else \
            {"win_rate_at_least_70%": r["win_rate"] >= 0.7, "exact_match_above_sft": r["all"] > sft["all"]}
    stage_seconds = {s: round(v["seconds"], 1) for s, v in stages.items()}
    report = {"preset": preset, "test_prompts": scores["test_prompts"],
              "commands": {s: f"{PROG} {shlex.join(v['command'])}" for s, v in stages.items()},
              "status": {s: v["status"] for s, v in stages.items()}, "rows": rows, "targets": targets,
              "reward_model": reward_eval, "ppo_eval": ppo_eval, "dpo_eval": dpo_eval, "examples": scores["examples"],
              "seconds": {**stage_seconds, **{k: round(v, 1) for k, v in times.items()},
                          "from_scratch": round(sum(v["seconds"] for v in stages.values()) + times["report"], 1)}}
    js = out / "report.json"
    js.write_text(json.dumps(report, indent=1) + "\n")

    md = [f"# {PROG} pipeline: report card", "",
          f"Preset `{preset}` ({PRESETS[preset]['about']}); {scores['test_prompts']} test prompts of the built-in "
          f"task; every stage from scratch took {report['seconds']['from_scratch'] / 60:.1f} min "
          f"(this run: {times['total'] / 60:.1f} min).", "", "## Commands", "", "```bash"]
    md += [("# skipped (no such command in this version): " if stages[s]["status"] == "skipped" else "")
           + report["commands"][s] for s in STAGES]
    md += ["```", "", "## Results", "", markdown_table(rows), "", COLUMN_NOTES, ""]
    for stage, t in targets.items():
        if t is None:
            md.append(f"- {stage}: not run, so not scored.")
        else:
            r = rows[stage]
            md.append(f"- {stage} against SFT: win rate {r['win_rate']:.1%} (target >= 70%: "
                      f"{'met' if t['win_rate_at_least_70%'] else 'not met'}), exact match {r['all']:.1%} vs "
                      f"{sft['all']:.1%} ({'higher' if t['exact_match_above_sft'] else 'not higher'}).")
    if reward_eval:
        md += ["", f"Reward model: held-out pair accuracy {reward_eval['accuracy']:.1%} over "
               f"{reward_eval['pairs']} validation pairs (DIR/reward/reward_eval.json)."]
    if ppo_eval:
        md += [f"PPO's own last evaluation (iter {ppo_eval['iter']}, prompts sampled at temperature 1): reward-model "
               f"score {ppo_eval['val/objective/scores']:+.3f}, KL to its start {ppo_eval['val/objective/kl']:.3f}, "
               f"exact match {ppo_eval['val/rollout/correct']:.1%} (DIR/ppo/ppo_eval.json)."]
    if dpo_eval:
        md += [f"DPO: implicit-reward pair accuracy {dpo_eval['rewards/accuracy']:.1%}, margin "
               f"{dpo_eval['rewards/margin']:+.3f} over {dpo_eval['pairs']} validation pairs (DIR/dpo/dpo_eval.json)."]
    md += ["", "## Example replies (greedy)", "", "| prompt | answer | " + " | ".join(rows) + " |",
           "|" + "---|" * (len(rows) + 2)]
    from ..align.tasks import answer
    for ex in scores["examples"]:
        cells = [ex["prompt"], answer(ex["prompt"]), *(ex[s] for s in rows)]
        md.append("| " + " | ".join("`" + c.replace("|", "\\|").replace("\n", " ") + "`" for c in cells) + " |")
    md += ["", "## Loss curves", ""]
    for stage in STAGES:
        png = out / stage / "loss.png"
        md.append(f"![{stage} loss]({stage}/loss.png)" if png.exists() else f"- {stage}: no loss.png")
    md += ["", "## Wall time (seconds)", "", "| " + " | ".join(STAGES) + " | report | all |",
           "|" + "---:|" * (len(STAGES) + 2),
           "| " + " | ".join(f"{stage_seconds[s]:.0f}" for s in STAGES) + f" | {times['report']:.0f} | "
           f"{report['seconds']['from_scratch']:.0f} |", "", "## Pre-training data", "", CORPUS_NOTE, ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path, js


def run(args) -> int:
    preset = "quick" if args.quick else args.preset
    n_prompts = PRESETS[preset]["test_prompts"] if args.test_prompts is None else args.test_prompts
    if n_prompts < 1:
        raise UsageError(f"--test-prompts must be a positive integer, got {n_prompts}")
    out = Path(args.out)
    commands = stage_commands(args.out, preset, args.device, args.seed, args.quiet)
    start = time.perf_counter()
    try:
        stages = run_stages(out, commands, args.overwrite, log=lambda s: print(s, flush=True))
    except StageFailed as e:
        print(f"{PROG} pipeline: {e}", file=sys.stderr)
        return e.rc
    train_seconds = time.perf_counter() - start
    print(f"[report] scoring {', '.join(s for s in CHAT_STAGES if stages[s]['status'] != 'skipped')} on "
          f"{n_prompts} test prompts", flush=True)
    t = time.perf_counter()
    scores = evaluate_stages(out, stages, n_prompts, args.device,
                             PRESETS[preset].get("max_new_tokens", MAX_NEW_TOKENS), log=lambda s: print(s, flush=True))
    times = {"stages": train_seconds, "report": time.perf_counter() - t, "total": time.perf_counter() - start}
    md, js = write_report(out, preset, stages, scores, times)
    print(f"report: {md} and {js} ({times['total'] / 60:.1f} min in all)")
    return 0
