"""`tinygrad-lm reward`: a reward model, the transformer plus a scalar head on the last token, trained
on preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected).

The pairs are TRL's JSONL ({"prompt", "chosen", "rejected"}; the last tenth is held out), or, with
--task builtin, made here: the base (the SFT model) answers each prompt of the built-in task twice
and the scripted judge ranks the two replies (align.reward.judge_pairs: the "humans rank responses"
step, counts logged, every pair written to OUT/pairs.jsonl, validation pairs from validation
prompts). Otherwise a fine-tuning run like `sft` (--method full by default; lora, qlora, adapter,
prompt), on the same training loop. At the end every held-out pair is scored: the pair accuracy
(chosen strictly above rejected) is printed and written to OUT/reward_eval.json.

A later phase (PPO) loads the run with ``load_reward_model(OUT, device)``."""
from __future__ import annotations

import json
from pathlib import Path

from .common import UsageError, load_model, load_source
from .finetune import DEFAULTS, add_phase_args, hold_out, run_phase

PAIRS_NAME = "pairs.jsonl"
EVAL_NAME = "reward_eval.json"


def add_parser(sub) -> None:
    r = sub.add_parser("reward", help="train a reward model on preference pairs (Bradley-Terry; held-out accuracy)",
                       description="Train a reward model (the transformer plus a scalar head on the last token) on "
                                   "preference pairs, from a JSONL file or ranked by the built-in task's judge.")
    add_phase_args(r, 'JSONL of preference pairs: {"prompt", "chosen", "rejected"} (TRL\'s names; strings or '
                      "message lists); the last tenth is held out", method="full")
    r.add_argument("--base", metavar="CKPT", default=None,
                   help="the SFT run to start from, as --ckpt (the issue's spelling: reward --base CKPT)")
    r.add_argument("--task", choices=("builtin",), default=None,
                   help="instead of --data: pairs made by sampling the base twice per prompt of the built-in task "
                        "and ranking the replies with the scripted judge (written to OUT/pairs.jsonl)")
    r.add_argument("--task-size", "--task_size", dest="task_size", type=int, default=500, metavar="N",
                   help="built-in task: training pairs to collect (validation: a tenth as many, at least 50)")
    r.add_argument("--sample-temperature", "--sample_temperature", dest="sample_temperature", type=float,
                   default=1.0, metavar="X", help="built-in task: temperature of the two sampled replies")
    r.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=48,
                   metavar="N", help="built-in task: longest sampled reply, in tokens")
    r.add_argument("--no-reference-pairs", "--no_reference_pairs", dest="no_reference_pairs", action="store_true",
                   help="built-in task: only sampled pairs; by default a prompt whose two replies tie, or are both "
                        "wrong and equally far from the answer, gives the true answer over a wrong reply instead")


def data_spec(args) -> dict | None:
    """What the run saves to rebuild its pairs on --resume (None: resuming, the run's own)."""
    if args.resume:
        return None
    if args.task and args.data:
        raise ValueError("reward: give --data or --task builtin, not both")
    if args.task:
        if args.task_size < 1:
            raise ValueError(f"--task-size must be a positive integer, got {args.task_size}")
        if not args.sample_temperature >= 0 or args.max_new_tokens < 1:
            raise ValueError("--sample-temperature must be >= 0 and --max-new-tokens >= 1")
        return {"task": args.task, "train": args.task_size, "val": max(50, args.task_size // 10), "seed": args.seed,
                "temperature": args.sample_temperature, "max_new_tokens": args.max_new_tokens,
                "reference": not args.no_reference_pairs}
    if args.data:
        return {"jsonl": str(Path(args.data).resolve())}
    return None


def judge_builtin(args, spec: dict) -> dict:
    """Sample and rank the built-in task's pairs with the base; write OUT/pairs.jsonl (train pairs,
    then validation pairs) and return the data spec that reads it back, with the judge's counts."""
    from ..align.jsonl import write_jsonl
    from ..align.reward import judge_pairs
    from ..align.tasks import task_split
    from ..train import RunExistsError, existing_run
    out = Path(args.out)
    held = existing_run(out)
    if held and not args.overwrite:   # say so before minutes of sampling, not after
        raise RunExistsError(f"{out} already holds a training run ({held}); continue it with --resume, start "
                             "over with --overwrite, or choose another --out")
    model, tok = load_source(args.ckpt, args.model, args.device)
    model.eval()
    kw = dict(temperature=spec["temperature"], max_new_tokens=spec["max_new_tokens"], reference=spec["reference"],
              log=lambda s: print(s, flush=True))
    made, counts = {}, {}
    for i, (split, n) in enumerate((("train", spec["train"]), ("validation", spec["val"]))):
        prompts = [e["prompt"] for e in task_split(split, 2 * n, seed=spec["seed"])]   # spares for ties
        made[split], counts[split] = judge_pairs(model, tok, prompts, n, seed=spec["seed"] + i, name=split, **kw)
        if not made[split]:
            raise ValueError(f"the judge found no {split} pair: every prompt's two replies tied (both correct?); "
                             "raise --sample-temperature")
    out.mkdir(parents=True, exist_ok=True)
    path = out / PAIRS_NAME
    write_jsonl(path, [{**r, "split": split} for split, rows in made.items() for r in rows])
    print(f"pairs: {path} ({len(made['train'])} train + {len(made['validation'])} validation)", flush=True)
    return {"jsonl": str(path.resolve()), "val": len(made["validation"]), "judge": {**spec, "counts": counts}}


def build_data(spec: dict, tokenizer):
    """PreferenceData of a spec: the JSONL's last ``spec["val"]`` pairs (default: a tenth) held out."""
    from ..align.jsonl import read_jsonl
    from ..align.preferences import PreferenceData
    rows = read_jsonl(spec["jsonl"], "preference")
    train, val = hold_out(rows, spec["jsonl"], "pair(s)", "a reward model", spec.get("val"))
    return PreferenceData(train, val, tokenizer, source=spec["jsonl"])


def load_reward_model(path, device: str = "cpu"):
    """(reward model, tokenizer, checkpoint) of a `tinygrad-lm reward` run (its folder or checkpoint
    file) or of RewardModel.save's folder: the base and method rebuilt as the run recorded them, the
    trained parameters and the head loaded. In eval mode."""
    from ..align.reward import RewardModel
    model, tok, ck = load_model(path, device)
    return RewardModel.from_checkpoint(model, ck), tok, ck


def run(args) -> int:
    from ..align.reward import RewardModel, evaluate_reward_model
    from ..checkpoint import checkpoint_path, checkpoint_step
    if args.base is not None:
        if args.ckpt is not None or args.model is not None:
            raise UsageError("--base names the base as --ckpt does: give one of --base, --ckpt, --model")
        args.ckpt = args.base
    if args.merge:
        raise UsageError("reward: --merge does not apply: the reward model is its run's checkpoint "
                         "(load_reward_model reads it)")
    spec = data_spec(args)
    if spec is not None and "task" in spec:
        spec = judge_builtin(args, spec)
    made = {}

    def build(spec, tok):   # run_phase calls it with the spec saved in the run when resuming
        made["spec"], made["data"] = spec, build_data(spec, tok)
        return made["data"]

    def wrap(model, tok):
        made["model"] = RewardModel(model)
        return made["model"]

    rc = run_phase(args, "reward", spec, build, wrap, outputs=False)
    if rc == 0 and "model" in made:
        stats = evaluate_reward_model(made["model"], made["data"], "val", args.batch_size or DEFAULTS["batch_size"])
        stats["iter"] = checkpoint_step(args.out)
        if "judge" in made["spec"]:
            stats["judge"] = made["spec"]["judge"]
        path = Path(args.out) / EVAL_NAME
        path.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"checkpoint: {checkpoint_path(args.out)} (a later phase loads it with "
              "tinygrad_lm.cli.reward.load_reward_model)")
        print(f"reward: held-out pair accuracy {stats['accuracy']:.1%} over all {stats['pairs']} validation pairs; "
              f"Bradley-Terry loss {stats['loss']:.4f}; mean reward chosen {stats['reward_chosen']:+.3f}, "
              f"rejected {stats['reward_rejected']:+.3f} ({path})", flush=True)
    return rc
