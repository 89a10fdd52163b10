"""`tinygrad-lm dpo`: Direct Preference Optimization of a policy on preference pairs (TRL's JSONL:
{"prompt", "chosen", "rejected"}) or on pairs of the built-in task (chosen: the answer; rejected:
the answer one character off, which the scripted judge ranks lower). A JSONL whose records say
"split": "train" or "validation" (a reward run's pairs.jsonl) is split so; otherwise its last
tenth is held out. Summed reply log-probs, beta 0.1, a frozen reference: a copy of the policy
(--method full), or the base with the adapter disabled (lora, qlora, adapter, prompt). Otherwise a
fine-tuning run like `sft` on the same training loop (--resume, Ctrl-C, log.jsonl, where the
losses are DPO's); at the end the implicit reward margin and pair accuracy over every validation
pair are printed and written to OUT/dpo_eval.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..checkpoint import CKPT_NAME, LEGACY_CKPT_NAME, META_KEY
from .common import UsageError
from .finetune import DEFAULTS, add_phase_args, hold_out, run_phase

EVAL_NAME = "dpo_eval.json"


def add_parser(sub) -> None:
    d = sub.add_parser("dpo", help="align a policy with preference pairs by DPO (frozen reference, implicit rewards)",
                       description="Direct Preference Optimization: raise the policy's log-probability of chosen "
                                   "replies over rejected ones, relative to a frozen reference.")
    add_phase_args(d, 'JSONL of preference pairs: {"prompt", "chosen", "rejected"} (TRL\'s names; e.g. a reward '
                      "run's pairs.jsonl)", method="full")
    d.add_argument("--policy", metavar="CKPT|NAME",
                   help="the policy to start from (and the reference): a training run's folder or checkpoint (as "
                        "--ckpt) or a pretrained model (as --model)")
    d.add_argument("--beta", type=float, default=None, metavar="X",
                   help="DPO's beta: the implicit reward is beta * (log pi - log ref) (default: 0.1)")
    d.add_argument("--task", choices=("builtin",), default=None,
                   help="instead of --data: pairs of the built-in task (chosen the answer, rejected one character off)")
    d.add_argument("--task-size", "--task_size", dest="task_size", type=int, default=2000, metavar="N",
                   help="training pairs of the built-in task (validation: a tenth as many, at least 50)")


def policy_source(value: str) -> tuple[str, str]:
    """("ckpt", value) for a training run (a folder with a checkpoint, or a checkpoint file), else
    ("model", value): a pretrained model's folder, .gguf file or name."""
    p = Path(value)
    if p.is_dir():
        return ("ckpt" if (p / CKPT_NAME).exists() or (p / LEGACY_CKPT_NAME).exists() else "model"), value
    if p.is_file() and p.suffix == ".npz":
        return "ckpt", value
    if p.is_file() and p.suffix == ".safetensors":
        from ..hub.safetensors_file import read_safetensors_header
        try:
            ours = META_KEY in (read_safetensors_header(p)[1] or {})
        except Exception:   # not readable as ours: let the model loader say what is wrong
            ours = False
        return ("ckpt" if ours else "model"), value
    return "model", value


def take_policy(args) -> None:
    """--policy as the base: sets args.ckpt or args.model (policy_source decides which)."""
    if args.policy is not None:
        if args.ckpt is not None or args.model is not None:
            raise UsageError("--policy names the base as --ckpt or --model do: give one of them")
        kind, value = policy_source(args.policy)
        setattr(args, kind, value)


def data_spec(args) -> dict | None:
    """What the run saves to rebuild its pairs and objective on --resume (None: resuming, the run's own)."""
    if args.resume:
        return None
    if args.task and args.data:
        raise ValueError("dpo: give --data or --task builtin, not both")
    beta = 0.1 if args.beta is None else args.beta
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"--beta must be a finite number > 0, got {beta}")
    common = {"beta": beta, "reference": "copy" if args.method == "full" else "adapter"}
    if args.task:
        if args.task_size < 1:
            raise ValueError(f"--task-size must be a positive integer, got {args.task_size}")
        return {"task": args.task, "train": args.task_size, "val": max(50, args.task_size // 10), "seed": args.seed,
                **common}
    if args.data:
        return {"jsonl": str(Path(args.data).resolve()), **common}
    return None


def build_data(spec: dict, tokenizer):
    from ..align.preferences import PreferenceData
    if "task" in spec:
        from ..align.dpo import task_preference_pairs
        train = task_preference_pairs("train", spec["train"], seed=spec["seed"])
        val = task_preference_pairs("validation", spec["val"], seed=spec["seed"])
        return PreferenceData(train, val, tokenizer,
                              source=f"the built-in task's pairs ({spec['train']} + {spec['val']} pairs)")
    from ..align.jsonl import read_jsonl
    rows = read_jsonl(spec["jsonl"], "preference")
    split = _split_fields(spec["jsonl"])
    if set(split) == {"train", "validation"}:    # a reward run's pairs.jsonl says which is which
        train = [r for r, s in zip(rows, split) if s == "train"]
        val = [r for r, s in zip(rows, split) if s == "validation"]
        return PreferenceData(train, val, tokenizer, source=f"{spec['jsonl']} (its train and validation pairs)")
    train, val = hold_out(rows, spec["jsonl"], "pair(s)", "DPO")
    return PreferenceData(train, val, tokenizer, source=spec["jsonl"])


def _split_fields(path) -> list:
    """Each record's "split" field (None where it has none), in the order read_jsonl reads them;
    read_jsonl has checked the file already."""
    found = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = (raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw).decode("utf-8")
            if line.strip():
                found.append(json.loads(line).get("split"))
    return found


def run(args) -> int:
    from ..align.dpo import DPOModel, evaluate_pairs
    take_policy(args)
    made = {}

    def build(spec, tok):   # run_phase calls it first, with the spec saved in the run when resuming
        if args.beta is not None and args.beta != spec["beta"]:
            raise UsageError(f"this run trains with beta {spec['beta']}: a resumed run keeps its --beta")
        made["spec"], made["data"] = spec, build_data(spec, tok)
        return made["data"]

    def wrap(model, tok):
        made["dpo"] = DPOModel(model, beta=made["spec"]["beta"], reference=made["spec"]["reference"])
        return made["dpo"]

    rc = run_phase(args, "dpo", data_spec(args), build, wrap)
    if rc == 0 and "dpo" in made:
        stats = evaluate_pairs(made["dpo"], made["data"], "val", args.batch_size or DEFAULTS["batch_size"])
        path = Path(args.out) / EVAL_NAME
        path.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"dpo: {stats['pairs']} validation pairs: accuracy {stats['rewards/accuracy']:.3f}, reward margin "
              f"{stats['rewards/margin']:+.4f} (chosen {stats['rewards/chosen']:+.4f}, rejected "
              f"{stats['rewards/rejected']:+.4f}), loss {stats['loss']:.4f} ({path})")
    return rc
