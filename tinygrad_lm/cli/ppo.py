"""`tinygrad-lm ppo`: RLHF's last step, InstructGPT-style PPO of a policy (the SFT run) against a
reward model (a `tinygrad-lm reward` run), on the built-in task's prompts or a JSONL of TRL's
{"prompt"} records (its last tenth held out).

Each round the policy answers --rollout-batch prompts (the KV-cached sampler), the reward model
scores the replies, a per-token KL penalty keeps the policy near where it started (--kl-coef, or
adaptive toward --target-kl), GAE (gamma 1, lambda 0.95) gives whitened advantages, and
--ppo-epochs passes of minibatches (--batch_size) update the policy and its value head with
clipped losses (0.2): align.ppo. A fine-tuning run otherwise, on the one training loop (--method
full by default; lora etc. as in `sft`; --resume, Ctrl-C, log.jsonl with reward, KL, entropy,
clip fraction and reply length per step). Evaluations (every --eval_interval updates, a whole
number of rounds) sample fixed prompts afresh and print the negated objective -(score - kl_coef KL)
as the loss. The run folder loads as the policy in `chat`, `eval` and `generate --ckpt`."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..align.evaluate import MAX_NEW_TOKENS
from .common import UsageError, load_checkpoint
from .dpo import take_policy
from .finetune import add_phase_args, hold_out, run_phase

EVAL_NAME = "ppo_eval.json"
# a PPO run's training defaults: minibatches of 16 rollouts, 2 epochs over rounds of 64 (8 updates a
# round), an evaluation every 5 rounds, no warm-up, the model's whole context for prompt + reply
PPO_DEFAULTS = dict(batch_size=16, seq_len=None, max_iters=200, eval_interval=40, warmup_iters=0, lr_decay_iters=200,
                    grad_clip=1.0)


def add_parser(sub) -> None:
    p = sub.add_parser("ppo", help="RLHF: PPO of a policy against a reward model (KL penalty, value head, GAE)",
                       description="InstructGPT-style PPO: sample replies, score them with a reward model, and "
                                   "update the policy with clipped losses while a KL penalty keeps it near its start.")
    add_phase_args(p, 'JSONL of prompts: {"prompt": ...} (TRL\'s name); the last tenth is held out', method="full",
                   defaults=PPO_DEFAULTS)
    p.add_argument("--policy", metavar="CKPT|NAME",
                   help="the policy to start from (and the KL reference): an SFT run's folder, or a model")
    p.add_argument("--reward", required=False, metavar="CKPT", help="the reward model: a `tinygrad-lm reward` run")
    p.add_argument("--task", choices=("builtin",), default=None,
                   help="instead of --data: the built-in task's prompts (training split; validation held out)")
    p.add_argument("--task-size", "--task_size", dest="task_size", type=int, default=2000, metavar="N",
                   help="built-in task: training prompts to cycle through (validation: a tenth, at least 50)")
    g = p.add_argument_group("PPO")
    g.add_argument("--rollout-batch", "--rollout_batch", dest="rollout_batch", type=int, default=64, metavar="N",
                   help="replies sampled per round (a multiple of --batch_size)")
    g.add_argument("--ppo-epochs", "--ppo_epochs", dest="ppo_epochs", type=int, default=2, metavar="K",
                   help="passes over each round's rollouts")
    g.add_argument("--kl-coef", "--kl_coef", dest="kl_coef", type=float, default=0.05, metavar="X",
                   help="per-token KL penalty coefficient (the adaptive controller's start with --target-kl)")
    g.add_argument("--target-kl", "--target_kl", dest="target_kl", type=float, default=None, metavar="X",
                   help="adapt the KL coefficient toward this KL per reply (Ziegler et al.); default: fixed")
    g.add_argument("--vf-coef", "--vf_coef", dest="vf_coef", type=float, default=0.1, metavar="X",
                   help="weight of the value loss")
    g.add_argument("--cliprange", type=float, default=0.2, metavar="X", help="policy ratio clip")
    g.add_argument("--cliprange-value", "--cliprange_value", dest="cliprange_value", type=float, default=0.2,
                   metavar="X", help="value clip")
    g.add_argument("--temperature", type=float, default=1.0, metavar="X", help="sampling temperature of rollouts")
    g.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=MAX_NEW_TOKENS,
                   metavar="N",
                   help="longest reply, in tokens")
    g.add_argument("--missing-eos-penalty", "--missing_eos_penalty", dest="missing_eos_penalty", type=float,
                   default=1.0, metavar="X", help="subtracted from the score of a reply that never ended")
    g.add_argument("--eval-prompts", "--eval_prompts", dest="eval_prompts", type=int, default=32, metavar="N",
                   help="training and validation prompts sampled at each evaluation")


def data_spec(args) -> dict | None:
    """What the run saves to rebuild its prompts, reward model and PPO settings on --resume."""
    if args.resume:
        return None
    if args.task and args.data:
        raise ValueError("ppo: give --data or --task builtin, not both")
    if not (args.task or args.data):
        return None
    if args.reward is None:
        raise UsageError("ppo needs a reward model: --reward RUN (a `tinygrad-lm reward` run)")
    for name in ("rollout_batch", "ppo_epochs", "max_new_tokens", "eval_prompts", "task_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    for name in ("kl_coef", "missing_eos_penalty", "temperature"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    spec = {"reward": str(Path(args.reward).resolve()), "seed": args.seed,
            "reference": "copy" if args.method == "full" else "adapter",
            **{k: getattr(args, k) for k in ("rollout_batch", "ppo_epochs", "kl_coef", "target_kl", "vf_coef",
                                             "cliprange", "cliprange_value", "temperature", "max_new_tokens",
                                             "missing_eos_penalty", "eval_prompts")}}
    if args.task:
        return {**spec, "task": args.task, "train": args.task_size, "val": max(50, args.task_size // 10)}
    return {**spec, "jsonl": str(Path(args.data).resolve())}


def prompts_of(spec: dict) -> tuple[dict, str]:
    """({"train", "val"} prompt texts, a description) of a spec."""
    if "task" in spec:
        from ..align.tasks import task_split
        return ({"train": [e["prompt"] for e in task_split("train", spec["train"], seed=spec["seed"])],
                 "val": [e["prompt"] for e in task_split("validation", spec["val"], seed=spec["seed"])]},
                f"the built-in task's prompts ({spec['train']} + {spec['val']})")
    from ..align.jsonl import read_jsonl
    rows = [r["prompt"] for r in read_jsonl(spec["jsonl"], "prompt")]
    train, val = hold_out(rows, spec["jsonl"], "prompt(s)", "PPO")
    return {"train": train, "val": val}, spec["jsonl"]


def run(args) -> int:
    from ..align.ppo import PPOModel, RolloutData, kl_controller
    from .reward import load_reward_model
    take_policy(args)
    if args.merge:
        raise UsageError("ppo: --merge does not apply; merge a LoRA policy afterwards with `finetune --merge`")
    if args.resume and (args.reward is not None or args.task or args.data):
        raise UsageError("--resume continues the run with its own reward model and prompts: give only --out")
    made = {}

    def build(spec, tok):   # run_phase calls it first, with the spec saved in the run when resuming
        rm, rm_tok, _ = load_reward_model(spec["reward"], args.device)
        rm.requires_grad_(False)
        prompts, source = prompts_of(spec)
        made["spec"] = spec
        made["data"] = RolloutData(prompts, tok, rm, rm_tok, rollout_batch=spec["rollout_batch"],
                                   ppo_epochs=spec["ppo_epochs"], kl=kl_controller(spec["kl_coef"], spec["target_kl"]),
                                   seed=spec["seed"], eval_prompts=spec["eval_prompts"], source=source,
                                   temperature=spec["temperature"], max_new_tokens=spec["max_new_tokens"],
                                   missing_eos_penalty=spec["missing_eos_penalty"])
        return made["data"]

    def wrap(model, tok):
        spec = made["spec"]
        made["ppo"] = PPOModel(model, reference=spec["reference"], cliprange=spec["cliprange"],
                               cliprange_value=spec["cliprange_value"], vf_coef=spec["vf_coef"])
        made["data"].attach(made["ppo"])
        saved = load_checkpoint(args.out)["meta"]["train_config"] if args.resume else PPO_DEFAULTS

        def setting(name):   # as run_phase settles it: the flag, else the run's own, else PPO's default
            return getattr(args, name) if getattr(args, name) is not None else saved[name]
        bs = saved["batch_size"] if args.resume else setting("batch_size")   # a resumed run keeps its batch
        if made["data"].rollout_batch % bs:
            raise UsageError(f"--rollout-batch ({made['data'].rollout_batch}) must be a multiple of --batch_size "
                             f"({bs}): each round is cut into whole minibatches")
        per_round = made["data"].updates_per_round(bs)
        every = setting("eval_interval")
        if every % per_round:
            raise UsageError(f"--eval_interval ({every}) must be a whole number of rounds ({per_round} updates each: "
                             "--ppo-epochs x --rollout-batch / --batch_size), so a checkpoint resumes exactly")
        return made["ppo"]

    rc = run_phase(args, "ppo", data_spec(args), build, wrap, defaults=PPO_DEFAULTS)
    if rc == 0 and "ppo" in made:
        evals = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines() if line.strip()]
        stats = [r for r in evals if r.get("eval")][-1]       # the Trainer's last evaluation, at the last step
        path = Path(args.out) / EVAL_NAME
        path.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"ppo: {min(made['data'].eval_prompts, len(made['data'].prompts['val']))} validation prompts sampled "
              f"at iter {stats['iter']}: mean score {stats['val/objective/scores']:+.3f}, KL to the start "
              f"{stats['val/objective/kl']:.3f}, reply length {stats['val/rollout/length']:.1f}, exact match "
              f"{stats['val/rollout/correct']:.1%} ({path})")
    return rc
