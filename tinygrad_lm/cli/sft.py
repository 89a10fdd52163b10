"""`tinygrad-lm sft`: instruction tuning. Conversations (TRL's JSONL: {"messages": [...]} or
{"prompt", "completion"}) or the built-in task go through the model's chat template, and only the
assistant's tokens are trained on; otherwise a fine-tuning run like `finetune` (--method full by
default; lora, qlora, adapter, prompt as there), on the same training loop."""
from __future__ import annotations

from pathlib import Path

from .finetune import add_phase_args, hold_out, run_phase


def add_parser(sub) -> None:
    s = sub.add_parser("sft", help="instruction-tune a model on conversations (loss on the assistant's tokens only)",
                       description="Supervised fine-tuning on conversations through the model's chat template.")
    add_phase_args(s, 'JSONL of conversations: {"messages": [{"role", "content"}, ...]} or {"prompt", "completion"}',
                   method="full")
    s.add_argument("--task", choices=("builtin",), default=None,
                   help="instead of --data: the built-in instruction task (reverse, sort, uppercase, add, count)")
    s.add_argument("--task-size", "--task_size", dest="task_size", type=int, default=2000, metavar="N",
                   help="training examples of the built-in task (validation: a tenth as many, at least 50)")
    s.add_argument("--packing", action="store_true",
                   help="several whole conversations per row of --seq_len tokens, none attending to another "
                        "(fewer padding tokens; attention then takes a slower masked path)")


def data_spec(args) -> dict | None:
    if args.resume:
        return None   # the run's own, from its checkpoint
    if args.task and args.data:
        raise ValueError("sft: give --data or --task builtin, not both")
    if args.task:
        if args.task_size < 1:
            raise ValueError(f"--task-size must be a positive integer, got {args.task_size}")
        spec = {"task": args.task, "train": args.task_size, "val": max(50, args.task_size // 10), "seed": args.seed}
    elif args.data:
        spec = {"jsonl": str(Path(args.data).resolve())}
    else:
        return None
    return {**spec, "packing": args.packing}   # saved with the run: --resume packs (or not) as it did


def build_data(spec: dict, tokenizer):
    from ..align.sft import SFTData, examples_to_conversations
    packing = spec.get("packing", False)   # runs from before --packing have no such key
    if "task" in spec:
        from ..align.tasks import task_split
        train = examples_to_conversations(task_split("train", spec["train"], seed=spec["seed"]))
        val = examples_to_conversations(task_split("validation", spec["val"], seed=spec["seed"]))
        return SFTData(train, val, tokenizer, source=f"the built-in task ({spec['train']} + {spec['val']} examples)",
                       packing=packing)
    from ..align.jsonl import read_jsonl
    rows = read_jsonl(spec["jsonl"], "sft")
    train, val = hold_out(rows, spec["jsonl"], "conversation(s)", "SFT")
    return SFTData(train, val, tokenizer, source=spec["jsonl"], packing=packing)


def run(args) -> int:
    return run_phase(args, "sft", data_spec(args), build_data)
