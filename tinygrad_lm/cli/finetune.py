"""`tinygrad-lm finetune`: adapt a trained or pretrained model to a text, through the training loop
of `train` (progress, log.jsonl, evaluations, checkpoints, --resume, Ctrl-C).

--method full trains every parameter; lora, adapter (bottleneck), prompt (soft prompt) and qlora
(LoRA over an NF4-quantized base) freeze the base and save only what they trained: the run's
checkpoint and, at the end, a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
that `generate`, `chat` and `eval` take with --adapter, and Hugging Face PEFT loads (LoRA, prompt)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..checkpoint import CKPT_NAME
from ..peft.files import CONFIG_NAME, WEIGHTS_NAME
from ..peft.finetune import DEFAULT_LR, METHODS, method_config, prepare, rebuild, run_meta
from ..train import TrainConfig, Trainer
from .common import PROG, UsageError, add_model_args, compile_notice, load_checkpoint, load_source
from .train import _add_config_flags

# a fine-tuning run's defaults: short, small batches of 256 tokens, no weight decay on what is adapted
DEFAULTS = dict(batch_size=8, seq_len=256, max_iters=200, eval_interval=50, eval_iters=10, warmup_iters=10,
                lr_decay_iters=200, weight_decay=0.0, log_interval=10, sample_tokens=0)
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
RUN_FIELDS = ("out_dir", "data", "tokenizer", "bpe_vocab_size", "device", "seed", "progress")  # set below, not flags
HF_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def add_parser(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a model: full, LoRA, bottleneck adapters, soft prompt or QLoRA",
                       description="Fine-tune a training run (--ckpt) or a pretrained model (--model) on a text.")
    add_phase_args(f, "UTF-8 text file or folder to adapt to", method="lora")


def add_phase_args(f, data_help: str, method: str, defaults: dict | None = None) -> None:
    """The options of every fine-tuning phase (finetune, sft): base, data, method, run folder, training
    fields (shown with fine-tuning's defaults, or the phase's own ``defaults`` over them)."""
    add_model_args(f, "fine-tune", required=False)   # --resume takes the base its run recorded
    f.add_argument("--data", metavar="PATH", help=data_help)
    f.add_argument("--method", choices=METHODS, default=method,
                   help="full: every parameter; lora; adapter: Houlsby bottleneck adapters; prompt: a soft prompt; "
                        "qlora: LoRA over a 4-bit NF4 base")
    f.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoint, log, and the adapter (or model)")
    fate = f.add_mutually_exclusive_group()
    fate.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    fate.add_argument("--overwrite", action="store_true", help="delete the run saved in --out and start over")
    f.add_argument("--merge", action="store_true",
                   help="lora/qlora: also write the base with the LoRA merged in as a full model, in DIR/merged")
    g = f.add_argument_group("method options")
    g.add_argument("--lora-r", "--lora_r", dest="lora_r", type=int, default=8, metavar="N", help="LoRA rank")
    g.add_argument("--lora-alpha", "--lora_alpha", dest="lora_alpha", type=float, default=16, metavar="X",
                   help="LoRA scale numerator (scale = alpha / r)")
    g.add_argument("--lora-dropout", "--lora_dropout", dest="lora_dropout", type=float, default=0.0, metavar="X",
                   help="dropout on the LoRA branch's input")
    g.add_argument("--target-modules", "--target_modules", dest="target_modules", default="all-linear",
                   metavar="NAMES", help="layers LoRA wraps: all-linear, or names such as c_attn,c_fc")
    g.add_argument("--reduction-factor", "--reduction_factor", dest="reduction_factor", type=int, default=16,
                   metavar="N", help="bottleneck adapters: hidden units = n_embd / N")
    g.add_argument("--num-virtual-tokens", "--num_virtual_tokens", dest="num_virtual_tokens", type=int, default=20,
                   metavar="N", help="soft prompt length")
    g.add_argument("--prompt-init", "--prompt_init", dest="prompt_init", choices=("random", "sample_vocab", "text"),
                   default=None, help="soft prompt start: N(0,1), sampled token embeddings (default), or a text's")
    g.add_argument("--prompt-init-text", "--prompt_init_text", dest="prompt_init_text", default=None, metavar="TEXT",
                   help="the text of --prompt-init text")
    g.add_argument("--quantize", choices=("int8", "nf4"), default=None,
                   help="lora/qlora: the frozen base's quantization (qlora default: nf4)")
    f.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train")
    f.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of the added weights and the batches")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(f, (TrainConfig,), {**DEFAULTS, **(defaults or {}), "learning_rate": None},
                      "training fields (as in `train`; learning_rate defaults by method: "
                      + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")


VAL_SHARE = 0.1   # a phase's JSONL without a split of its own: its last tenth is held out


def hold_out(rows: list, path, what: str, phase: str, n_val: int | None = None) -> tuple[list, list]:
    """(train, validation) records of a JSONL: the last ``n_val`` (default: a tenth, at least one)
    held out; an error naming the file when nothing would be left to train on."""
    n_val = n_val or max(1, round(len(rows) * VAL_SHARE))
    if len(rows) <= n_val:
        raise ValueError(f"{path}: {len(rows)} {what}; {phase} needs training records besides the {n_val} held out")
    return rows[:-n_val], rows[-n_val:]

def _base_record(args) -> dict:
    """The base as the checkpoint records it: absolute paths, so --resume works from any folder."""
    if args.ckpt is not None:
        return {"ckpt": str(Path(args.ckpt).resolve())}
    p = Path(args.model)
    return {"model": str(p.resolve()) if p.exists() else args.model}


def _load_base(base: dict, device):
    return load_source(base.get("ckpt"), base.get("model"), device)


def run(args) -> int:
    return run_phase(args, "finetune")


def run_phase(args, phase: str, data_spec: dict | None = None, build_data=None, wrap_model=None,
              outputs: bool = True, defaults: dict | None = None) -> int:
    """A fine-tuning run of ``phase`` ("finetune", "sft", ...): the base plus a method, trained on
    --data's text, or on ``build_data(data_spec, tokenizer)`` (a batch source; the spec is saved
    with the run, so --resume rebuilds the same data). ``wrap_model(model, tokenizer)``: the module
    the Trainer trains instead (a reward model, DPO's policy + reference); it must hold the
    fine-tuned model as its attribute ``model``, so the checkpoint's "model.*" entries are that
    model's (cli.common.load_model reads them back) and its other trained parameters sit beside.
    ``outputs=False``: no adapter or model folder beside the checkpoint (a reward model is its
    checkpoint: the body alone, as an LM, would only mislead). ``defaults``: the phase's own training
    defaults over fine-tuning's (PPO: minibatches of 16 rollouts, the whole context)."""
    from ..tensor import manual_seed
    out = Path(args.out)
    tvals = {**DEFAULTS, **(defaults or {})}
    if args.resume:
        meta = load_checkpoint(out)["meta"]
        if "finetune" not in meta or meta["finetune"].get("phase", "finetune") != phase:
            raise UsageError(f"{out} does not hold a `{phase}` run: continue it with the command that started it")
        ft = meta["finetune"]
        tvals.update({k: v for k, v in meta["train_config"].items()
                      if k in TrainConfig.field_names() and k not in RUN_FIELDS})
        method, data_spec = ft["method"], ft.get("data")
    else:
        if args.ckpt is None and args.model is None or args.data is None and data_spec is None:
            raise UsageError(f"{phase} needs a base (--ckpt or --model) and data (or --resume of a run in --out)")
        method = args.method
        held = [n for n in ADAPTER_FILES if (out / n).exists()]
        if held and not args.overwrite:
            raise FileExistsError(f"{out} already holds an adapter ({', '.join(held)}); --overwrite replaces it, "
                                  "or choose another --out")
    if args.merge and method not in ("lora", "qlora"):
        raise UsageError(f"--merge: only LoRA merges into the base; --method {method} stays a separate adapter")
    for f in TrainConfig.field_names():
        v = getattr(args, f, None)
        if v is not None and f not in RUN_FIELDS:
            tvals[f] = v
    if tvals.get("learning_rate") is None:
        tvals["learning_rate"] = DEFAULT_LR[method]
    tvals["min_lr"] = min(tvals.get("min_lr") or tvals["learning_rate"] / 10, tvals["learning_rate"])
    if not args.resume and getattr(args, "lr_decay_iters", None) is None:
        tvals["lr_decay_iters"] = tvals["max_iters"]
    manual_seed(args.seed)   # the added weights' init is part of the run
    if args.resume:
        model, tok = rebuild(ft, lambda base: _load_base(base, args.device))
    else:
        base = _base_record(args)
        model, tok = _load_base(base, args.device)
        options = {k: getattr(args, k) for k in ("lora_r", "lora_alpha", "lora_dropout", "target_modules",
                                                 "reduction_factor", "num_virtual_tokens", "prompt_init",
                                                 "prompt_init_text")}
        config = method_config(method, options, base.get("model") or base.get("ckpt"))
        model = prepare(model, method, config, tok, args.quantize)
        ft = run_meta(method, config, base, args.quantize if method != "qlora" else (args.quantize or "nf4"))
        ft.update(phase=phase, data=data_spec, wrapped=wrap_model is not None)
    if args.overwrite:
        for name in ADAPTER_FILES + HF_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "merged", ignore_errors=True)
    tcfg = TrainConfig(out_dir=str(out), data=args.data, tokenizer=tok.kind if tok.kind in ("char", "byte", "bpe")
                       else "bpe", device=args.device, seed=args.seed, progress=not args.quiet, **tvals)
    data = build_data(data_spec, tok) if data_spec is not None else None
    trained = wrap_model(model, tok) if wrap_model is not None else model
    trainer = Trainer(tcfg, resume=args.resume, overwrite=args.overwrite, log=lambda s: print(s, flush=True),
                      model=trained, tokenizer=tok, meta={"finetune": ft}, data=data)
    m, d = trainer.model, trainer.data
    n_train, n_all = m.num_parameters(trainable=True), m.num_parameters()
    print(f"data: {d.source}, {d.num_tokens:,} tokens ({len(d.train):,} train / {len(d.val):,} val); "
          f"{method}: training {n_train:,} of {n_all:,} parameters ({100 * n_train / n_all:.3f}%)", flush=True)
    compile_notice(tcfg.device)
    result = trainer.train()
    if result:
        print(f"final: train loss {result['train']:.4f}, val loss {result['val']:.4f} (iter {trainer.last_eval_iter})")
    if outputs and trainer.world.rank == 0:  # under mpiexec: one rank writes the folders
        _write_outputs(trainer.out, model, method, ft, args.merge, tok)
    if trainer.interrupted:
        print(f"continue with: {PROG} {phase} --resume --out {out}")
        return 130
    return 0


def _write_outputs(out, model, method, ft, merge: bool, tok) -> None:
    """The run's product next to its checkpoint: the adapter folder (or the full model), and --merge's model."""
    base = ft["base"].get("model") or ft["base"].get("ckpt")
    flag = "--model" if "model" in ft["base"] else "--ckpt"
    quant = f" --quantize {ft['quantize']}" if ft.get("quantize") else ""
    if method == "full":
        if "model" in ft["base"]:
            try:
                model.save_pretrained(out, tokenizer=tok)
                print(f"model: {out} (Hugging Face layout; try: {PROG} generate --model {out})")
            except ValueError as e:   # no HF class for this architecture: the checkpoint is the model
                print(f"model: {out / CKPT_NAME} ({e})")
        print(f"checkpoint: {out / CKPT_NAME} (try: {PROG} generate --ckpt {out})")
        return
    model.save_pretrained(out)
    print(f"adapter: {out} ({CONFIG_NAME} + {WEIGHTS_NAME}); try: {PROG} generate {flag} {base}{quant} --adapter {out}")
    if merge:
        merged = model.merge_and_unload()
        try:
            merged.save_pretrained(out / "merged", tokenizer=tok)
            print(f"merged model: {out / 'merged'} (try: {PROG} generate --model {out / 'merged'})")
        except ValueError as e:
            raise UsageError(f"--merge: {e}") from None
