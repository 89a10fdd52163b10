"""`tinygrad-lm`: train, generate, chat, eval, tokenizer and info from the command line, one module
per command (each with ``add_parser(sub)`` and ``run(args)``).

Bad input (a missing file, an invalid value, a corrupt checkpoint...) prints one line
"tinygrad-lm: error: ..." and exits with code 2, without a traceback.

Under ``mpiexec -n N`` the training commands run data parallel (tinygrad_lm.distributed)."""
from __future__ import annotations

import os
import sys

from .. import __version__, distributed
from ..checkpoint import CheckpointError
from ..tokenizers import UnknownCharactersError
from ..train import TrainingError
from . import eval as eval_cmd
from . import inspect as inspect_cmd   # not `inspect`: that name is the standard library's
from . import chat, dpo, finetune, generate, info, pipeline, ppo, profile, reward, scaling, sft, tokenizer, train
from .common import PROG, HelpFormatter, Parser, UsageError  # noqa: F401  (HelpFormatter: re-exported)
from .train import FIELD_HELP, _config_flags  # noqa: F401  (tests check every field has help)

COMMANDS = {"train": train, "finetune": finetune, "sft": sft, "reward": reward, "dpo": dpo, "ppo": ppo,
            "pipeline": pipeline, "generate": generate, "chat": chat, "eval": eval_cmd, "tokenizer": tokenizer,
            "info": info, "profile": profile, "inspect": inspect_cmd, "scaling": scaling}
DATA_PARALLEL = ("train", "finetune", "sft", "reward", "dpo")  # the commands that run under mpiexec


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Train and sample a small GPT written from scratch on NumPy. "
               "With no arguments: `train` with its defaults.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="{" + ",".join(COMMANDS) + "}")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train"] + argv  # the main job (`tinygrad-lm`, `tinygrad-lm --max_iters 100`): train
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)}")
        if distributed.launched():
            return _run_data_parallel(args)
        return COMMANDS[args.command].run(args)
    except UnknownCharactersError as e:
        print(f"{PROG}: error: {_one_line(e)}; a character-level model knows only the characters of its "
              f"training text: leave these out, or train with --tokenizer byte or bpe (any text)", file=sys.stderr)
        return 2
    except (UsageError, ValueError, CheckpointError, FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (TrainingError, distributed.DistributedError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "cuda" in str(e).lower() or "CuPy" in str(e):
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tinygrad-lm generate ... | head`: the reader has gone, say nothing
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports it


def _run_data_parallel(args) -> int:
    """This rank's part of `mpiexec -n N tinygrad-lm COMMAND ...`: only rank 0 prints; an error only
    this rank met ends the whole job once it is printed (MPI_Abort), so no other rank waits forever."""
    if args.command not in DATA_PARALLEL:
        raise UsageError(f"{args.command} under mpiexec is not supported yet; the commands that run data "
                         f"parallel are {', '.join(DATA_PARALLEL)}")
    world = distributed.world(args.device)
    if world.rank > 0:
        sys.stdout = open(os.devnull, "w")  # one copy of the output: rank 0's (errors still go to stderr)
    try:
        return COMMANDS[args.command].run(args)
    except BaseException:
        if world.failed_together and world.rank > 0:  # rank 0 says it: its error, or which rank failed and why
            sys.stderr = open(os.devnull, "w")
        world.abort_at_exit()
        raise


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
