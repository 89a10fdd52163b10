"""Shared pytest/hypothesis configuration.

Profiles: "ci" (the default: modest example counts so the suite stays fast on 2 cores,
no example database so every run draws fresh, independent examples) and "dev" (more
examples). Pick one with HYPOTHESIS_PROFILE=dev.

Kernel modes: every test of the op test modules (test_ops_*.py, test_functional.py) runs
twice, inside tinygrad_lm.use_kernels("reference") and use_kernels("fast"); the mode shows
in the test id, e.g. test_softmax[fast-...]. Other tests run in the process's mode."""
import os
import re

import pytest
from hypothesis import HealthCheck, settings

from tinygrad_lm import cache

# Tests point TINYGRAD_LM_CACHE at fresh folders (token caches), in-process and in the `tinygrad-lm`
# subprocesses they start; the compiled kernels would follow and be rebuilt (~15 s) each time.
# One kernel cache for the whole session, as a user has one: the folder the user's settings give.
os.environ.setdefault("NUMBA_CACHE_DIR", str(cache.numba_cache_dir()))

import tinygrad_lm  # noqa: E402
from tinygrad_lm.backend import KERNEL_MODES  # noqa: E402

settings.register_profile(
    "ci", max_examples=30, deadline=None, database=None, print_blob=True, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OP_TEST_MODULES = re.compile(r"test_ops_\w+|test_functional")


def is_op_test_module(module) -> bool:
    return OP_TEST_MODULES.fullmatch(module.__name__.rpartition(".")[2]) is not None


def pytest_generate_tests(metafunc):
    if "kernels" in metafunc.fixturenames and is_op_test_module(metafunc.module):
        metafunc.parametrize("kernels", KERNEL_MODES, indirect=True)


@pytest.fixture(autouse=True)
def kernels(request):
    """The kernel mode this test runs in ("reference" or "fast"); None outside the op tests."""
    mode = getattr(request, "param", None)
    if mode is None:
        yield None
        return
    with tinygrad_lm.use_kernels(mode):
        yield mode


CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def chat_base(tmp_path_factory):
    """A folder holding "base": a tiny byte-level GPT (1 layer, 32 wide, context 128) whose tokenizer
    has ChatML's special tokens, as an HF folder; one per test module (runs are written beside it)."""
    import warnings

    from tinygrad_lm.models import GPT, GPTConfig
    from tinygrad_lm.tensor import manual_seed
    from tinygrad_lm.tokenizers import ByteTokenizer
    tok = ByteTokenizer(CHAT_TOKENS)
    d = tmp_path_factory.mktemp("chat_base")
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no HF class for a byte tokenizer: saved in our own JSON
        model.save_pretrained(d / "base", tokenizer=tok)
    return d
