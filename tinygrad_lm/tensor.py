"""Tensor and the reverse-mode autograd graph.

A Tensor wraps an array (``.data``: NumPy on "cpu", CuPy on "cuda"). Every differentiable
op is a ``Function`` subclass with ``forward`` (arrays in, array out; it keeps on ``self``
what the backward needs) and ``backward`` (gradient of the output in, one gradient per
input out). ``Function.apply`` runs the forward and, when grad mode is on and an input
requires grad, records the node so ``Tensor.backward`` can walk the graph in reverse.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import backend
from .backend import DEFAULT_FLOAT, device_of, is_float, normalize_device

class _GradMode(threading.local):
    """Grad mode, per thread (like PyTorch's). The class attribute is every thread's default, so
    reading ``_state.grad_enabled`` never misses; ``getattr(local, name, default)`` on a miss
    raises and catches an AttributeError, which cost more than the rest of an op's bookkeeping."""
    grad_enabled = True


_state = _GradMode()


def is_grad_enabled() -> bool:
    return _state.grad_enabled


class _SetGradMode(contextlib.ContextDecorator):
    """Set grad mode inside a with-block or a decorated function; re-entrant (a decorated
    function may call itself), so previous modes are kept on a stack."""
    mode = True

    def __init__(self):
        self._prev = []

    def __enter__(self):
        self._prev.append(_state.grad_enabled)
        _state.grad_enabled = self.mode

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev.pop()
        return False


class no_grad(_SetGradMode):
    """Context manager and decorator: ops inside record no graph (like torch.no_grad)."""
    mode = False


class enable_grad(_SetGradMode):
    """Turn graph recording back on inside a no_grad region."""
    mode = True


class Function:
    """One differentiable op: ``forward(*arrays, **kwargs) -> array`` and ``backward(grad) -> grads``.

    ``backward`` returns one gradient (or None) per Tensor input, each of that input's shape.
    ``self.needs_input_grad`` tells which ones are wanted, so work can be skipped.

    An op of one input whose gradient is mostly zeros (indexing, slicing) may also define
    ``add_grad_into(grad, acc)``: add its input gradient into ``acc``, a gradient array that
    backward() allocated itself for that input. Three slices q, k, v of one qkv projection
    then cost one zero-filled array instead of three, plus two full-size additions less."""

    # parents: per input, the Function that made it (its graph node), or the Tensor itself for a
    # leaf or a constant. The graph holds no intermediate Tensor, so an op output that no backward
    # needs (a residual branch before its add, say) is freed as soon as the caller drops it, as
    # in PyTorch (measured: -300 MB at the peak of a small-config GPT step). out_dtype and
    # out_shape describe this node's output.
    __slots__ = ("parents", "needs_input_grad", "out_dtype", "out_shape", "__dict__")
    requires_grad = True  # as a graph node: every recorded op's output requires grad
    fresh_grads = False   # True: backward returns new arrays that the engine may add into in place

    @classmethod
    def apply(cls, *tensors: "Tensor", **kwargs) -> "Tensor":
        # Runs once per op, so it stays lean: list comprehensions, not generators; `True in`,
        # not any(); the grad mode read last, only when some input requires grad.
        ctx = cls()
        ctx.needs_input_grad = needs = tuple([t.requires_grad for t in tensors])
        out = ctx.forward(*[t.data for t in tensors], **kwargs)
        if out.__class__ is not _ndarray and isinstance(out, np.generic):
            out = np.asarray(out)  # NumPy turns 0-d results into scalars; .data stays an array
        if True in needs and _state.grad_enabled:
            ctx.parents = tuple([t if t._ctx is None else t._ctx for t in tensors])
            ctx.out_dtype, ctx.out_shape = out.dtype, out.shape
            return Tensor._wrap(out, True, ctx)
        return Tensor._wrap(out, False)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__}>"


_ndarray = np.ndarray
_FREED = object()  # marks a graph node whose saved arrays were released by backward()


def _to_array(data, dtype, device):
    """Array from user data. Python floats become float32 (the training default), never float64."""
    if isinstance(data, Tensor):
        data = data.data
    if device is None:
        device = device_of(data) if not isinstance(data, (list, tuple, int, float, bool)) else "cpu"
    device = normalize_device(device)
    xp = backend.get_xp(device)
    if dtype is not None:
        dtype = np.dtype(dtype)
    if isinstance(data, (np.ndarray, np.generic)) or device_of(data) == "cuda" and hasattr(data, "shape"):
        arr = backend.to_device(data, device)
        if not isinstance(arr, np.ndarray) and isinstance(arr, np.generic):
            arr = np.asarray(arr)
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(DEFAULT_FLOAT)
        arr = backend.to_device(arr, device)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    if arr.dtype == object:
        raise TypeError(f"cannot make a Tensor from {type(data).__name__} data (object array)")
    return xp.asarray(arr)


class Tensor:
    """An n-dimensional array that can record the ops applied to it for reverse-mode autodiff."""

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "__weakref__")
    __array_priority__ = 1000  # so ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        self.data = _to_array(data, dtype, device)
        self.grad = None
        self._ctx = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @staticmethod
    def _wrap(data, requires_grad: bool, ctx: "Function | None" = None) -> "Tensor":
        """Fast constructor for op outputs: no conversion or checks."""
        t = Tensor.__new__(Tensor)
        t.data = data
        t.grad = None
        t.requires_grad = requires_grad
        t._ctx = ctx
        return t

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        """Set requires_grad in place (only float tensors can require grad); returns self."""
        if flag and not is_float(self.data.dtype):
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(flag)
        return self

    # ---- array-like attributes -------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{dev}{grad})"

    def __hash__(self):  # __eq__ is elementwise, so hash by identity like torch.Tensor
        return id(self)

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.size} elements is ambiguous")
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied to the host for cuda tensors)."""
        return backend.to_numpy(self.data)

    def item(self):
        """The single element as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        """The data as (nested) Python lists."""
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A new tensor sharing the data, cut from the graph."""
        return Tensor._wrap(self.data, False)

    def to(self, device) -> "Tensor":
        """This tensor on ``device`` (a copy if it moves; the copy is a new leaf)."""
        device = normalize_device(device)
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def cpu(self):
        """This tensor on the CPU."""
        return self.to("cpu")

    def cuda(self):
        """This tensor on the GPU (needs CuPy and a GPU)."""
        return self.to("cuda")

    def astype(self, dtype) -> "Tensor":
        """Cast to another dtype (differentiable between float dtypes)."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if self.requires_grad and is_float(dtype):
            return ops.movement.Cast.apply(self, dtype=dtype)
        return Tensor._wrap(self.data.astype(dtype), False)

    def float(self) -> "Tensor":
        """Cast to float32."""
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        """Cast to float64."""
        return self.astype(np.float64)

    def zero_grad(self):
        """Drop the accumulated gradient (sets .grad to None)."""
        self.grad = None

    # ---- autograd ------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad.

        The graph is walked in reverse topological order without recursion. Unless
        ``retain_graph`` is True, every node's saved arrays are released afterwards and a
        second backward through the same graph raises an error."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input of the ops that made it has requires_grad=True)")
        xp = backend.xp_of(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a grad argument needs a scalar (one-element) "
                                   f"tensor, got shape {self.shape}; pass grad= of that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape} but the tensor has shape {self.shape}")
            grad = grad.astype(self.dtype, copy=True)  # our own copy: leaves may keep it as .grad

        root = self if self._ctx is None else self._ctx
        topo = _toposort(root)
        grads = {id(root): grad}
        stored = set()  # ids of arrays already handed to a leaf's .grad in this pass
        owned = set()   # ids of gradient arrays this pass allocated: safe to add into in place
        for node in reversed(topo):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            owned.discard(id(g))  # what backward returns may alias g: never add into it again
            if isinstance(node, Tensor):  # a leaf (Parameter too): accumulate into .grad
                if node.grad is None:
                    # a leaf owns its .grad: copy views, scalars and arrays another leaf already holds
                    if isinstance(g, np.generic) or g.base is not None or id(g) in stored:
                        g = np.array(g) if isinstance(g, np.generic) else g.copy()
                    stored.add(id(g))
                    node.grad = g
                else:
                    node.grad += g
                continue
            ctx = node
            if ctx.parents is _FREED:
                raise RuntimeError("backward() through a graph that was already freed by an earlier "
                                   "backward(); pass retain_graph=True to the first call to keep it")
            prev = grads.get(id(ctx.parents[0])) if len(ctx.parents) == 1 else None
            if prev is not None and id(prev) in owned and hasattr(ctx, "add_grad_into"):
                ctx.add_grad_into(g, prev)
                in_grads = ()
            else:
                in_grads = ctx.backward(g)
                if not isinstance(in_grads, tuple):
                    in_grads = (in_grads,)
            for p, pg in zip(ctx.parents, in_grads):
                if pg is None or not p.requires_grad:
                    continue
                dtype = p.dtype if isinstance(p, Tensor) else p.out_dtype
                if pg.dtype != dtype:
                    pg = pg.astype(dtype)
                prev = grads.get(id(p))
                if prev is None:
                    grads[id(p)] = pg
                    if ctx.fresh_grads:
                        owned.add(id(pg))
                elif id(prev) in owned:
                    prev += pg
                else:
                    grads[id(p)] = prev = prev + pg
                    owned.add(id(prev))
            # drop this step's references now: a big gradient held here would stay alive while
            # the next node's backward allocates its own
            g = prev = pg = in_grads = None
            if not retain_graph:
                ctx.parents = _FREED
                ctx.__dict__.clear()

    # ---- ops: thin methods over the Function library (tinygrad_lm.ops) ---------------------
    def _binary(self, other, fn, reverse=False):
        a, b = _operands(self, other)
        if reverse:
            a, b = b, a
        try:
            return fn.apply(a, b)
        except ValueError as e:
            if a.data.shape != b.data.shape and "broadcast" in str(e):
                raise ValueError(f"{fn.__name__.lower()}: shapes {a.shape} and {b.shape} cannot be "
                                 f"broadcast together") from None
            raise

    def __add__(self, other):
        """a + b (broadcasting)."""
        return self._binary(other, ops.elementwise.Add)

    def __radd__(self, other):
        """b + a."""
        return self._binary(other, ops.elementwise.Add, reverse=True)

    def __sub__(self, other):
        """a - b (broadcasting)."""
        return self._binary(other, ops.elementwise.Sub)

    def __rsub__(self, other):
        """b - a."""
        return self._binary(other, ops.elementwise.Sub, reverse=True)

    def __mul__(self, other):
        """a * b (broadcasting)."""
        return self._binary(other, ops.elementwise.Mul)

    def __rmul__(self, other):
        """b * a."""
        return self._binary(other, ops.elementwise.Mul, reverse=True)

    def __truediv__(self, other):
        """a / b (broadcasting)."""
        return self._binary(other, ops.elementwise.Div)

    def __rtruediv__(self, other):
        """b / a."""
        return self._binary(other, ops.elementwise.Div, reverse=True)

    def __pow__(self, other):
        """a ** b (a Python number exponent, or a tensor)."""
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            base = self
            if isinstance(other, float) and not is_float(self.dtype):  # int ** 0.5 is float32, not float64
                base = Tensor._wrap(self.data.astype(DEFAULT_FLOAT), False)
            return ops.elementwise.PowScalar.apply(base, exponent=other)
        return self._binary(other, ops.elementwise.Pow)

    def __rpow__(self, other):
        """b ** a."""
        return self._binary(other, ops.elementwise.Pow, reverse=True)

    def __neg__(self):
        """-a."""
        return ops.elementwise.Neg.apply(self)

    def __matmul__(self, other):
        """a @ b (see matmul)."""
        return self.matmul(other)

    def __rmatmul__(self, other):
        """b @ a."""
        return _operands(self, other)[1].matmul(self)

    def matmul(self, other) -> "Tensor":
        """Matrix product with NumPy's rules: 1-D, 2-D and batched N-D with broadcast batch dims."""
        a, b = _operands(self, other)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes {a.shape} and {b.shape}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                             f"{ka} (last dim of a) != {kb} ({'dim -2' if b.ndim > 1 else 'dim 0'} of b)")
        try:
            return ops.matmul.MatMul.apply(a, b)
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of shapes {a.shape} and {b.shape} cannot be "
                             f"broadcast together") from None

    # comparisons: no gradient, boolean result
    def _compare(self, other, fn):
        a, b = _operands(self, other)
        return Tensor._wrap(fn(a.data, b.data), False)

    def __lt__(self, other):
        """a < b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.less)

    def __le__(self, other):
        """a <= b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.less_equal)

    def __gt__(self, other):
        """a > b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.greater)

    def __ge__(self, other):
        """a >= b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.greater_equal)

    def __eq__(self, other):
        """a == b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.equal)

    def __ne__(self, other):
        """a != b elementwise (bool tensor, no gradient)."""
        return self._compare(other, np.not_equal)

    # unary elementwise
    def exp(self):
        """e ** x."""
        return ops.elementwise.Exp.apply(self)

    def log(self):
        """Natural logarithm."""
        return ops.elementwise.Log.apply(self)

    def sqrt(self):
        """Square root."""
        return ops.elementwise.Sqrt.apply(self)

    def abs(self):
        """Absolute value (gradient sign(x), 0 at 0)."""
        return ops.elementwise.Abs.apply(self)

    def tanh(self):
        """Hyperbolic tangent."""
        return ops.elementwise.Tanh.apply(self)

    def sigmoid(self):
        """Logistic sigmoid 1 / (1 + e ** -x)."""
        return ops.elementwise.Sigmoid.apply(self)

    def relu(self):
        """max(x, 0) (gradient 0 at 0)."""
        return ops.elementwise.Relu.apply(self)

    def maximum(self, other):
        """Elementwise maximum; at ties the gradient is split evenly."""
        return self._binary(other, ops.elementwise.Maximum)

    def minimum(self, other):
        """Elementwise minimum; at ties the gradient is split evenly."""
        return self._binary(other, ops.elementwise.Minimum)

    def clip(self, min=None, max=None):
        """Clamp to [min, max]; the gradient passes where min <= x <= max."""
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        return ops.elementwise.Clip.apply(self, lo=min, hi=max)

    def masked_fill(self, mask, value):
        """Copy of self with ``value`` where ``mask`` (bool, broadcastable to self) is True."""
        return where(mask, value, self)

    # reductions
    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (int, tuple or None for all)."""
        return ops.reduce.Sum.apply(self, axis=backend.normalize_axis(axis, self.ndim, "sum"), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        """Arithmetic mean over ``axis``."""
        return ops.reduce.Mean.apply(self, axis=backend.normalize_axis(axis, self.ndim, "mean"), keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis``; the gradient is split evenly between tied maxima."""
        return ops.reduce.Max.apply(self, axis=backend.normalize_axis(axis, self.ndim, "max"),
                                    keepdims=keepdims, sign=1)

    def min(self, axis=None, keepdims=False):
        """Minimum over ``axis``; the gradient is split evenly between tied minima."""
        return ops.reduce.Max.apply(self, axis=backend.normalize_axis(axis, self.ndim, "min"),
                                    keepdims=keepdims, sign=-1)

    def var(self, axis=None, keepdims=False, ddof=0):
        """Variance over ``axis`` with NumPy's ``ddof`` (0: population variance, NumPy's default)."""
        return ops.reduce.Var.apply(self, axis=backend.normalize_axis(axis, self.ndim, "var"),
                                    keepdims=keepdims, ddof=ddof)

    def argmax(self, axis=None, keepdims=False):
        """Index of the maximum (no gradient)."""
        return Tensor._wrap(self.data.argmax(axis=axis, keepdims=keepdims), False)

    # movement
    def reshape(self, *shape):
        """Same data in a new shape; one dimension may be -1."""
        old = self.data.shape
        new = _infer_shape(_shape_arg(shape), self.data.size, old)
        return self if new == old else ops.movement.Reshape.apply(self, shape=new)

    view = reshape

    def flatten(self, start_axis=0, end_axis=-1):
        """Merge axes start_axis..end_axis into one."""
        if self.ndim == 0:
            return self.reshape(1)
        s, e = (a % self.ndim for a in (start_axis, end_axis))
        return self.reshape(*self.shape[:s], -1, *self.shape[e + 1:])

    def squeeze(self, axis=None):
        """Remove size-1 axes (all of them, or those in ``axis``)."""
        axes = backend.normalize_axis(axis, self.ndim, "squeeze")
        if axis is not None:
            bad = [a for a in axes if self.shape[a] != 1]
            if bad:
                raise ValueError(f"squeeze: axis {bad[0]} has size {self.shape[bad[0]]}, not 1 (shape {self.shape})")
        return self.reshape(*[s for i, s in enumerate(self.shape) if not (i in axes and s == 1)])

    def unsqueeze(self, axis):
        """Insert a size-1 axis at position ``axis``."""
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(f"unsqueeze: axis {axis} is out of range for {self.ndim} dimensions")
        axis = axis % (self.ndim + 1)
        return self.reshape(*self.shape[:axis], 1, *self.shape[axis:])

    expand_dims = unsqueeze

    def transpose(self, *axes):
        """Permute axes (reverse them when none are given), like ndarray.transpose."""
        axes = _shape_arg(axes) if axes else tuple(range(self.ndim))[::-1]
        if any(not -self.ndim <= a < self.ndim for a in axes) or len(axes) != self.ndim \
                or sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {self.ndim} axes of shape {self.shape}")
        axes = tuple(a % self.ndim for a in axes)
        return ops.movement.Transpose.apply(self, axes=axes)

    permute = transpose

    @property
    def T(self):
        """The tensor with its axes reversed."""
        return self.transpose()

    def swapaxes(self, axis1, axis2):
        """Exchange two axes."""
        for a in (axis1, axis2):
            if not -self.ndim <= a < self.ndim:
                raise ValueError(f"swapaxes: axis {a} is out of range for a tensor of shape {self.shape}")
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return self.transpose(*axes)

    def broadcast_to(self, *shape):
        """Broadcast to ``shape`` (a read-only view; the gradient sums back over the new axes)."""
        shape = _shape_arg(shape)
        try:
            np.broadcast_shapes(self.shape, shape)
            if np.broadcast_shapes(self.shape, shape) != shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"broadcast_to: shape {self.shape} cannot be broadcast to {shape}") from None
        return self if shape == self.shape else ops.movement.Expand.apply(self, shape=shape)

    def expand(self, *shape):
        """Like broadcast_to; -1 keeps a dimension's size (PyTorch's expand)."""
        shape = _shape_arg(shape)
        lead = len(shape) - self.ndim
        shape = tuple(self.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
        return self.broadcast_to(*shape)

    def __getitem__(self, index):
        """Basic and advanced indexing; repeated integer indices accumulate in the gradient."""
        index = _index_arg(index)
        return ops.movement.GetItem.apply(self, index=index)

    # nn-flavoured methods (the functions live in tinygrad_lm.functional)
    def softmax(self, axis=-1):
        """Softmax along ``axis``."""
        return _functional().softmax(self, axis=axis)

    def log_softmax(self, axis=-1):
        """Log of the softmax along ``axis``, computed stably."""
        return _functional().log_softmax(self, axis=axis)


# ---- helpers -----------------------------------------------------------------------------

def _functional():
    from . import functional
    return functional


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple([int(s) for s in shape])


def _infer_shape(shape, size, old):
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: only one dimension can be -1, got {shape}")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise ValueError(f"reshape: negative dimension in {shape}")
            known *= s
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape tensor of shape {old} ({size} elements) into {shape}")
        shape = tuple([size // known if s == -1 else s for s in shape])
    elif known != size:
        raise ValueError(f"reshape: cannot reshape tensor of shape {old} ({size} elements) into {shape}")
    return shape


def _index_arg(index):
    """Tensors inside an index become their arrays (indices never carry gradients)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _operands(a: Tensor, b) -> tuple[Tensor, Tensor]:
    """Both operands as tensors of one device with a common dtype.

    Python scalars and integer tensors take the float tensor's dtype, so float32 stays
    float32; two float dtypes promote like NumPy (float32 with float64 gives float64)."""
    if not isinstance(b, Tensor):
        if isinstance(b, (int, float, bool)) or (isinstance(b, np.generic) and b.ndim == 0):
            xp = backend.xp_of(a.data)
            if is_float(a.data.dtype) or isinstance(b, (int, bool, np.integer, np.bool_)):
                return a, Tensor._wrap(xp.asarray(b, dtype=a.data.dtype), False)
            # an integer tensor meets a float: both become float32 (as in PyTorch), never float64
            return Tensor._wrap(a.data.astype(DEFAULT_FLOAT), False), Tensor._wrap(xp.asarray(b, dtype=DEFAULT_FLOAT), False)
        b = Tensor(b, device=a.device)
    if a.data.dtype != b.data.dtype:
        fa, fb = is_float(a.data.dtype), is_float(b.data.dtype)
        if fa and not fb:
            b = Tensor._wrap(b.data.astype(a.data.dtype), False)
        elif fb and not fa:
            a = Tensor._wrap(a.data.astype(b.data.dtype), False)
        elif fa and fb:
            dt = np.promote_types(a.data.dtype, b.data.dtype)
            a, b = a.astype(dt), b.astype(dt)
    if type(a.data) is not type(b.data):
        raise RuntimeError(f"operands are on different devices: '{a.device}' and '{b.device}'; "
                           f"move one with .to(device)")
    return a, b


def _toposort(root) -> list:
    """Graph nodes reachable from root (a Function, or a leaf Tensor), parents before children
    (iterative DFS). Leaves that require grad are nodes too; constants are left out."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if not isinstance(node, Tensor) and node.parents is not _FREED:
            for p in node.parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
    return order


# ---- module-level functions -----------------------------------------------------------------

def where(cond, a, b) -> Tensor:
    """Elementwise ``a`` where ``cond`` is True, else ``b`` (cond is not differentiated)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
    if isinstance(a, Tensor):
        a, b = _operands(a, b)
    else:
        b, a = _operands(b, a)
    cond_arr = cond.data if isinstance(cond, Tensor) else cond
    xp = backend.xp_of(a.data)
    cond_arr = xp.asarray(cond_arr)
    if cond_arr.dtype != bool:
        raise TypeError(f"where: cond must be a boolean array, got dtype {cond_arr.dtype}")
    try:
        return ops.elementwise.Where.apply(a, b, cond=cond_arr)
    except ValueError:
        raise ValueError(f"where: shapes cond {cond_arr.shape}, a {a.shape} and b {b.shape} cannot be "
                         f"broadcast together") from None


def concatenate(tensors, axis=0) -> Tensor:
    """Join tensors along an existing axis (NumPy's concatenate)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    first = tensors[0]
    tensors = [first] + [_operands(first, t)[1] for t in tensors[1:]]
    ndim = first.ndim
    for t in tensors:
        if t.ndim != ndim or any(s != u for i, (s, u) in enumerate(zip(t.shape, first.shape)) if i != axis % max(ndim, 1)):
            raise ValueError(f"concatenate: shapes {[x.shape for x in tensors]} differ outside axis {axis}")
    if ndim == 0:
        raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated")
    return ops.movement.Concatenate.apply(*tensors, axis=axis % ndim)


cat = concatenate


def stack(tensors, axis=0) -> Tensor:
    """Join same-shaped tensors along a new axis (NumPy's stack)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {[t.shape for t in tensors]}")
    return concatenate([t.unsqueeze(axis) for t in tensors], axis=axis)


def split(x: Tensor, indices_or_sections, axis=0) -> list[Tensor]:
    """Split along ``axis`` into equal sections or at the given indices (NumPy's split)."""
    n = x.shape[axis]
    if isinstance(indices_or_sections, int):
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise ValueError(f"split: axis {axis} of size {n} cannot be split into {indices_or_sections} equal sections")
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step))
    else:
        bounds = [0] + [min(int(i), n) for i in indices_or_sections] + [n]
    lead = (slice(None),) * (axis % x.ndim)
    return [x[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


# ---- factories ------------------------------------------------------------------------------

_rng = np.random.default_rng()


def host_array(x) -> np.ndarray:
    """``x`` (a Tensor, a NumPy or CuPy array, a list or a number) as a NumPy array on the host."""
    x = x.data if isinstance(x, Tensor) else x
    return backend.to_numpy(x) if hasattr(x, "shape") else np.asarray(x)


def manual_seed(seed: int) -> None:
    """Seed the generator used by randn, rand, dropout and weight initialisation."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    """The process-wide NumPy generator (seeded by manual_seed)."""
    return _rng


def get_rng_state():
    return _rng.bit_generator.state


def set_rng_state(state) -> None:
    _rng.bit_generator.state = state


def _factory(make, shape, dtype, device, requires_grad):
    shape = _shape_arg(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    dtype = np.dtype(dtype if dtype is not None else DEFAULT_FLOAT)
    return Tensor(make(shape, dtype), requires_grad=requires_grad, device=device)


def tensor(data, requires_grad=False, dtype=None, device=None) -> Tensor:
    """A new tensor from data (lists, scalars, arrays); Python floats become float32."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of zeros (float32 unless dtype is given)."""
    return _factory(lambda s, d: np.zeros(s, d), shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of ones (float32 unless dtype is given)."""
    return _factory(lambda s, d: np.ones(s, d), shape, dtype, device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor filled with fill_value (float32 unless dtype is given)."""
    return _factory(lambda s, d: np.full(s, fill_value, d), (shape,) if isinstance(shape, int) else (tuple(shape),),
                    dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples from the seeded generator."""
    return _factory(lambda s, d: _rng.standard_normal(s, dtype=np.float64).astype(d), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform [0, 1) samples from the seeded generator."""
    return _factory(lambda s, d: _rng.random(s, dtype=np.float64).astype(d), shape, dtype, device, requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    """Evenly spaced values like np.arange (int64 for int arguments, float32 otherwise)."""
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is None and arr.dtype == np.float64:
        arr = arr.astype(DEFAULT_FLOAT)
    return Tensor(arr, dtype=dtype, device=device)


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    """Zeros with t's shape, dtype and device."""
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    """Ones with t's shape, dtype and device."""
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


from . import ops  # noqa: E402  (ops import Function from this module)
import tinygrad_lm.ops.elementwise  # noqa: E402,F401
import tinygrad_lm.ops.matmul  # noqa: E402,F401
import tinygrad_lm.ops.movement  # noqa: E402,F401
import tinygrad_lm.ops.reduce  # noqa: E402,F401
