"""The installed package, seen from outside the repository (as users and the console script see it)."""
import subprocess
import sys


def _run(code: str, tmp_path):
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_kernels_import_as_tinygrad_lm_kernels_from_outside_the_repo(tmp_path):
    r = _run("import tinygrad_lm.kernels as k, tinygrad_lm.kernels.cpu.ops as o; "
             "print(k.__name__, sorted(k.available()['cpu']) == sorted(o.FAST))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tinygrad_lm.kernels", "True"]


def test_no_top_level_kernels_package_is_installed(tmp_path):
    """An unrelated PyPI package owns the name 'kernels': we must never install one."""
    r = _run("import kernels", tmp_path)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_fast_kernels_run_from_outside_the_repo(tmp_path):
    code = ("import tinygrad_lm as tg, tinygrad_lm.functional as F\n"
            "x = tg.randn(2, 3, 5, 4, requires_grad=True)\n"
            "F.scaled_dot_product_attention(x, x, x, causal=True).sum().backward()\n"
            "F.cross_entropy(F.layer_norm(x.reshape(-1, 4)), [0, 1, 2] * 10).backward()\n"
            "print(tg.kernel_mode(), x.grad.shape)")
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "fast (2, 3, 5, 4)"


def test_every_public_op_has_a_docstring():
    """Every Tensor op, F.* function and top-level factory says in one line what it does."""
    import tinygrad_lm as tg
    import tinygrad_lm.functional as F
    from tinygrad_lm import Tensor
    methods = [n for n in vars(Tensor) if callable(getattr(Tensor, n)) and (not n.startswith("_") or n in (
        "__add__", "__sub__", "__mul__", "__truediv__", "__pow__", "__neg__", "__matmul__", "__getitem__",
        "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"))]
    funcs = [getattr(F, n) for n in F.__all__] + [getattr(tg, n) for n in (
        "tensor", "zeros", "ones", "full", "randn", "rand", "arange", "zeros_like", "ones_like", "where",
        "concatenate", "stack", "split", "manual_seed", "gradcheck")]
    missing = [f"Tensor.{n}" for n in methods if not (getattr(Tensor, n).__doc__ or "").strip()]
    missing += [f.__name__ for f in funcs if not (f.__doc__ or "").strip()]
    assert not missing, f"ops without a docstring: {missing}"
