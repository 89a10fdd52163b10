"""Shape and movement ops: they rearrange elements, so their backward rearranges gradients back."""
import numpy as np

from ..backend import scatter_add, unbroadcast, xp_of
from ..tensor import Function


class Reshape(Function):
    def forward(self, x, shape):
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.in_shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.inverse = tuple(np.argsort(axes))
        return x.transpose(axes)

    def backward(self, g):
        return g.transpose(self.inverse)


class Expand(Function):
    def forward(self, x, shape):
        self.in_shape = x.shape
        return xp_of(x).broadcast_to(x, shape)

    def backward(self, g):  # every copy of an element sends its gradient back
        return unbroadcast(g, self.in_shape)


class Cast(Function):
    def forward(self, x, dtype):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return g.astype(self.in_dtype)


def _is_basic(index) -> bool:
    """True for ints, slices, None and Ellipsis only: such an index never repeats an element."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


class GetItem(Function):
    def forward(self, x, index):
        self.in_shape, self.dtype, self.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None

    fresh_grads = True   # backward returns a new zeros array: later slices' gradients are added into it

    def backward(self, g):
        gx = xp_of(g).zeros(self.in_shape, dtype=g.dtype)
        self.add_grad_into(g, gx)
        return gx

    def add_grad_into(self, g, acc):
        if _is_basic(self.index):
            acc[self.index] += g
            return
        # integer-array indices may repeat: accumulate, never overwrite
        index = self.index
        if isinstance(index, tuple) and any(i is None or i is Ellipsis for i in index):
            # mixed with None/Ellipsis: index an arange to learn each output's flat source position
            xp = xp_of(acc)
            pos = xp.arange(acc.size).reshape(self.in_shape)[index]
            scatter_add(acc, xp.unravel_index(pos.reshape(-1), self.in_shape), g.reshape(-1))
        else:
            scatter_add(acc, index, g)


class Concatenate(Function):
    def forward(self, *xs, axis):
        self.axis = axis
        self.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return xp_of(xs[0]).concatenate(xs, axis=axis)

    def backward(self, g):
        return tuple(xp_of(g).split(g, self.bounds, axis=self.axis))
