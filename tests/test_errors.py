"""Bad inputs fail early with errors that name the shapes, dtypes or values involved."""
import re

import numpy as np
import pytest

import tinygrad_lm as tg
import tinygrad_lm.functional as F
from strategies import T
from tinygrad_lm import Function, GradcheckError, Tensor, concatenate, gradcheck, split, stack, where

needs_no_gpu = pytest.mark.skipif(tg.cuda_available(), reason="checks the no-GPU error path")


def shape_re(shape):
    return re.escape(str(tuple(shape)))


# ---- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3), (2,)), ((5, 2, 3), (5, 4, 2))])
def test_matmul_mismatch_names_both_shapes(sa, sb):
    with pytest.raises(ValueError, match=f"{shape_re(sa)}.*{shape_re(sb)}"):
        T(np.ones(sa)) @ T(np.ones(sb))


def test_matmul_batch_mismatch_and_0d():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, 4, 2\)"):
        T(np.ones((2, 3, 4))) @ T(np.ones((5, 4, 2)))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        T(np.ones(3)) @ T(np.asarray(2.0))


@pytest.mark.parametrize("op", ["__add__", "__sub__", "__mul__", "__truediv__", "__pow__", "maximum", "minimum"])
def test_non_broadcastable_operands(op):
    a, b = T(np.ones((2, 3))), T(np.ones((4,)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\) cannot be broadcast"):
        getattr(a, op)(b)


def test_where_non_broadcastable():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\).*\(4,\)"):
        where(np.array([True, False]), T(np.ones(3)), T(np.ones(4)))


@pytest.mark.parametrize("new", [(4, 2), (-1, 4), (5,), (-1, -1), (2, -3)])
def test_reshape_incompatible(new):
    with pytest.raises(ValueError, match="reshape"):
        T(np.ones((2, 3))).reshape(*new)


def test_reshape_message_names_shape():
    with pytest.raises(ValueError, match=r"\(2, 3\).*6 elements.*\(4, 2\)"):
        T(np.ones((2, 3))).reshape(4, 2)


def test_squeeze_of_non_1_axis():
    with pytest.raises(ValueError, match=r"axis 1 has size 3.*\(1, 3\)"):
        T(np.ones((1, 3))).squeeze(1)


@pytest.mark.parametrize("call", [
    lambda x: x.sum(axis=2), lambda x: x.mean(axis=-3), lambda x: x.max(axis=(0, 5)), lambda x: x.min(axis=7),
    lambda x: x.var(axis=2), lambda x: x.squeeze(4), lambda x: x.unsqueeze(4), lambda x: F.softmax(x, axis=2),
    lambda x: F.log_softmax(x, axis=-3),
])
def test_bad_axis(call):
    with pytest.raises(ValueError, match="axis"):
        call(T(np.ones((2, 3))))


def test_repeated_axis_and_non_int_axis():
    with pytest.raises(ValueError, match="repeated"):
        T(np.ones((2, 3))).sum(axis=(0, 0))
    with pytest.raises(TypeError, match="axis"):
        T(np.ones((2, 3))).sum(axis=1.5)


def test_transpose_out_of_range_axis():
    with pytest.raises(ValueError, match="axes"):
        T(np.ones((2, 3))).transpose(0, 3)


def test_swapaxes_out_of_range_axis():
    with pytest.raises(ValueError, match="axis"):
        T(np.ones((2, 3))).swapaxes(0, 5)


def test_transpose_not_a_permutation():
    with pytest.raises(ValueError, match=r"not a permutation.*\(2, 3, 4\)"):
        T(np.ones((2, 3, 4))).transpose(0, 0, 1)


def test_broadcast_to_impossible():
    with pytest.raises(ValueError, match=r"\(2, 3\) cannot be broadcast to \(3, 3\)"):
        T(np.ones((2, 3))).broadcast_to(3, 3)
    with pytest.raises(ValueError, match="broadcast"):
        T(np.ones((2, 3))).expand(3)


def test_concatenate_stack_split_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        concatenate([T(np.ones((2, 3))), T(np.ones((2, 4)))], axis=0)
    with pytest.raises(ValueError, match="at least one"):
        concatenate([])
    with pytest.raises(ValueError, match="same shape"):
        stack([T(np.ones(2)), T(np.ones(3))])
    with pytest.raises(ValueError, match="size 5.*3 equal sections"):
        split(T(np.ones(5)), 3)


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match=r"shape \(2, 3\)"):
        T(np.ones((2, 3)))[:, 3]


# ---- autograd misuse ---------------------------------------------------------------------------

def test_backward_on_non_scalar_without_grad():
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        (T(np.ones((2, 3))) * 2).backward()


def test_backward_grad_of_wrong_shape():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        (T(np.ones((2, 3))) * 2).backward(np.ones(3))


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_integer_requires_grad_names_dtype():
    with pytest.raises(TypeError, match="int64"):
        tg.tensor([1, 2], requires_grad=True)


def test_object_data_rejected():
    with pytest.raises(TypeError):
        Tensor([object()])


def test_ambiguous_truth_value_and_item():
    with pytest.raises(ValueError, match="2 elements"):
        bool(T(np.ones(2)))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        T(np.ones(2)).item()


# ---- functional inputs ----------------------------------------------------------------------------

def test_cross_entropy_target_out_of_range():
    logits = T(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="target 4 .*4 classes"):
        F.cross_entropy(logits, [0, 4, 1])
    with pytest.raises(ValueError, match="target -2 .*4 classes"):
        F.cross_entropy(logits, [0, -2, 1])
    F.cross_entropy(logits, [0, -100, 1])  # ignore_index is allowed


def test_cross_entropy_float_targets():
    with pytest.raises(TypeError, match="float64"):
        F.cross_entropy(T(np.zeros((3, 4))), np.array([0.0, 1.0, 2.0]))


def test_cross_entropy_wrong_shape():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3, 4\).*\(3,\)"):
        F.cross_entropy(T(np.zeros((3, 4))), [0, 1])


def test_cross_entropy_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(T(np.zeros((3, 4))), [0, 1, 2], reduction="avg")


def test_embedding_ids_out_of_range():
    w = T(np.ones((5, 2)))
    with pytest.raises(IndexError, match="id 5 .*5 embeddings"):
        F.embedding([0, 5], w)
    with pytest.raises(IndexError, match="id -1 .*5 embeddings"):
        F.embedding(np.array([[-1, 0]]), w)
    with pytest.raises(TypeError, match="float"):
        F.embedding(np.array([0.0, 1.0]), w)
    with pytest.raises(ValueError, match=r"2-D.*\(5,\)"):
        F.embedding([0], T(np.ones(5)))


def test_linear_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(T(np.ones((2, 3))), T(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"bias.*\(3,\).*\(4,\)"):
        F.linear(T(np.ones((2, 5))), T(np.ones((4, 5))), T(np.ones(3)))


# ---- gradcheck -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gradcheck_rejects_nonfinite_inputs(bad):
    a = np.ones((2, 2))
    a[1, 0] = bad
    with pytest.raises(ValueError, match=r"input 0.*\(2, 2\).*NaN or inf"):
        gradcheck(lambda x: x * 2, [T(a)])


class WrongSquare(Function):
    """x ** 2 with a wrong backward (3x instead of 2x), to prove gradcheck catches it."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return g * 3 * self.x


class WrongAtOneIndex(Function):
    """Identity whose backward is wrong only at flat index 4."""

    def forward(self, x):
        return x.copy()

    def backward(self, g):
        g = g.copy()
        g.reshape(-1)[4] += 1.0
        return g


def test_gradcheck_catches_wrong_backward():
    a = np.random.default_rng(0).uniform(1, 2, (2, 3))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda c, x: WrongSquare.apply(x) * c, [2.0, T(a)])
    assert isinstance(info.value, AssertionError)
    assert re.search(r"input 1 \(shape \(2, 3\)\).*index", str(info.value))


class WrongShape(Function):
    """2 * sum(x) whose backward returns a (1,) gradient that would broadcast to the right values."""

    def forward(self, x):
        return 2 * x.sum()

    def backward(self, g):
        return (g * 2).reshape(1)


def test_gradcheck_catches_wrong_gradient_shape():
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3,\)\).*shape \(1,\)"):
        gradcheck(WrongShape.apply, [T([1.0, 2.0, 3.0])])


def test_gradcheck_names_the_bad_index():
    a = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(GradcheckError, match=r"input 0 .*index \(.*1.*,.*0.*\)"):
        gradcheck(WrongAtOneIndex.apply, [T(a)])  # flat 4 is (1, 0) in a (3, 4) array


def test_gradcheck_directional_catches_wrong_backward():
    a = np.random.default_rng(0).uniform(1, 2, (20, 30))
    with pytest.raises(GradcheckError, match="input 0.*directional"):
        gradcheck(WrongSquare.apply, [T(a)], directional=True)


def test_gradcheck_fails_on_nonfinite_numeric_gradient():
    """An output that is inf makes finite differences meaningless: that must fail, not pass."""
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: x.masked_fill(np.array([True, False]), np.inf), [T([1.0, 2.0])])


def test_gradcheck_misuse():
    with pytest.raises(GradcheckError, match="no input requires grad"):
        gradcheck(lambda x: x * 2, [T([1.0], requires_grad=False)])
    with pytest.raises(GradcheckError, match="must return a Tensor"):
        gradcheck(lambda x: 3.0, [T([1.0])])
    with pytest.raises(GradcheckError, match="float32"):
        gradcheck(lambda x: x.astype(np.float32), [T([1.0])])


def test_gradcheck_accepts_float32_inputs_and_checks_in_float64():
    x = Tensor(np.array([0.5, 1.5], np.float32), requires_grad=True)
    assert gradcheck(lambda t: t.exp() * t, [x])
    assert x.dtype == np.float32 and x.grad is None  # the caller's tensor is untouched


# ---- devices ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["tpu", "gpu", "mps", "cuda0", ""])
def test_unknown_device(device):
    with pytest.raises(ValueError, match="unknown device"):
        Tensor([1.0], device=device)
    with pytest.raises(ValueError, match="unknown device"):
        Tensor([1.0]).to(device)


def test_device_names_accepted():
    assert Tensor([1.0], device="cpu").device == "cpu"
    assert Tensor([1.0], device="CPU").device == "cpu"
    assert Tensor([1.0]).to("cpu").device == "cpu"


@needs_no_gpu
@pytest.mark.parametrize("make", [
    lambda: Tensor([1.0], device="cuda"), lambda: Tensor([1.0]).to("cuda"), lambda: Tensor([1.0]).cuda(),
    lambda: Tensor([1.0], device="cuda:0"), lambda: tg.zeros(2, device="cuda"),
])
def test_cuda_without_gpu_mentions_cupy(make):
    with pytest.raises(RuntimeError, match="CuPy"):
        make()


@pytest.mark.skipif(not tg.cuda_available(), reason="needs a GPU with CuPy to mix devices")
def test_mixing_devices():
    with pytest.raises(RuntimeError, match="different devices"):
        Tensor([1.0]) + Tensor([1.0], device="cuda")
