"""Coverage registry: every op has a gradcheck test.

Each op test module declares GRADCHECKED, the names it gradchecks: Function subclasses by
class name ("Add") and functional API names with an "F." prefix ("F.softmax"). This test
collects every Function subclass the library defines (recursively, after importing every
module of the package) and every name in tinygrad_lm.functional.__all__, and fails for any
that no module declares. A new op therefore fails CI until someone writes its test."""
import importlib
import pkgutil

import pytest

import test_functional
import test_ops_elementwise
import test_ops_matmul
import test_ops_movement
import test_ops_reduce
import test_quant
import tinygrad_lm
import tinygrad_lm.functional as F
from tinygrad_lm import Function

MODULES = [test_ops_elementwise, test_ops_reduce, test_ops_movement, test_ops_matmul, test_functional, test_quant]
OPTIONAL_DEPS = {"cupy", "cupyx", "torch", "matplotlib"}  # extras a module may need; absent here is fine


def declared_coverage(modules=MODULES) -> set[str]:
    covered = set()
    for m in modules:
        covered |= set(m.GRADCHECKED)
    return covered


def function_subclasses(root=Function) -> set[type]:
    """Every subclass of root, recursively (a subclass of a subclass is an op too)."""
    seen, todo = set(), [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen


def op_names(functions, functional_names) -> set[str]:
    return {f.__name__ for f in functions} | {f"F.{n}" for n in functional_names}


def uncovered(functions, functional_names, covered) -> list[str]:
    """The ops (Function classes and F.* names) with no declared gradcheck test."""
    return sorted(op_names(functions, functional_names) - set(covered))


def import_whole_package():
    """Import every tinygrad_lm module so that all Function subclasses exist. kernels/ lives
    outside the tinygrad_lm folder (installed as tinygrad_lm.kernels), so it is walked too."""
    import tinygrad_lm.kernels
    for pkg in (tinygrad_lm, tinygrad_lm.kernels):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:
                if e.name is None or e.name.split(".")[0] not in OPTIONAL_DEPS:
                    raise


def library_functions() -> set[type]:
    """Function subclasses defined by the library (not by tests, which define throwaway ones)."""
    import_whole_package()
    return {f for f in function_subclasses() if f.__module__.split(".")[0] == "tinygrad_lm"}


# ---- the registry check itself -----------------------------------------------------------------

def test_every_op_has_a_gradcheck_test():
    missing = uncovered(library_functions(), F.__all__, declared_coverage())
    assert not missing, (f"ops without a gradcheck test: {missing}; add a property test with gradcheck "
                         f"and list the name in that module's GRADCHECKED")


def test_declared_names_exist():
    """A typo or a removed op in GRADCHECKED must not count as coverage."""
    stale = declared_coverage() - op_names(library_functions(), F.__all__)
    assert not stale, f"GRADCHECKED names that are not ops: {sorted(stale)}"


def test_known_ops_are_found():
    """The scan sees the ops we know exist (guards against a scan that finds nothing)."""
    names = op_names(library_functions(), F.__all__)
    for expected in ("Add", "PowScalar", "Max", "GetItem", "MatMul", "CrossEntropy", "F.softmax",
                     "F.scaled_dot_product_attention"):
        assert expected in names


# ---- the checker catches what it should --------------------------------------------------------

def test_checker_flags_an_uncovered_function():
    class Uncovered(Function):  # a brand-new op with no test
        def forward(self, x):
            return x

        def backward(self, g):
            return g

    class SubOp(Uncovered):  # subclasses of subclasses count too
        pass

    found = function_subclasses()
    assert Uncovered in found and SubOp in found
    # the registry logic, on explicit sets (the real scan ignores classes defined in tests)
    from tinygrad_lm.ops.elementwise import Add
    assert uncovered({Add, Uncovered, SubOp}, ["softmax"], {"Add", "F.softmax"}) == ["SubOp", "Uncovered"]
    assert uncovered({Add}, ["softmax", "new_fn"], {"Add", "F.softmax"}) == ["F.new_fn"]
    assert uncovered({Add, Uncovered}, [], {"Add", "Uncovered"}) == []
    assert Uncovered not in library_functions()  # tests' own Functions do not pollute the real check


def test_checker_flags_a_library_function_without_test(monkeypatch):
    """A Function defined in a tinygrad_lm module is picked up by the real scan and fails it."""
    import tinygrad_lm.ops.elementwise as ew

    Fake = type("FakeNewOp", (Function,), {"__module__": "tinygrad_lm.ops.elementwise",
                                          "forward": lambda self, x: x, "backward": lambda self, g: g})
    monkeypatch.setattr(ew, "FakeNewOp", Fake, raising=False)
    try:
        assert "FakeNewOp" in uncovered(library_functions(), F.__all__, declared_coverage())
    finally:
        Fake.__module__ = "tests.fake"  # so that it stops counting for the rest of the session
    assert "FakeNewOp" not in uncovered(library_functions(), F.__all__, declared_coverage())


def test_checker_flags_a_functional_name_without_test(monkeypatch):
    before = uncovered(library_functions(), F.__all__, declared_coverage())
    monkeypatch.setattr(F, "__all__", F.__all__ + ["brand_new"])
    assert uncovered(library_functions(), F.__all__, declared_coverage()) == sorted(before + ["F.brand_new"])


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_each_module_declares_a_nonempty_registry(module):
    assert isinstance(module.GRADCHECKED, set) and module.GRADCHECKED


def test_float32_dtype_table_exercises_every_op():
    """test_autograd's float32 discipline table must reach every Function, like the gradchecks."""
    import test_autograd as ta
    seen = set()
    for fn in ta.OPS32.values():
        out = fn(ta._f32(ta.X), ta._f32(ta.P))
        seen |= {type(node).__name__ for node in ta._graph_nodes(out)}
    missing = sorted({f.__name__ for f in library_functions()} - seen)
    assert not missing, f"ops missing from test_autograd.OPS32 (float32 discipline): {missing}"
