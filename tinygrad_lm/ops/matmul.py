"""Matrix product with NumPy's rules (1-D operands are promoted, batch dims broadcast)."""
from ..backend import unbroadcast, xp_of
from ..tensor import Function


class MatMul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        xp = xp_of(g)
        na, nb = self.needs_input_grad
        if a.ndim == 1 and b.ndim == 1:  # inner product: g is a scalar
            return (g * b if na else None), (g * a if nb else None)
        # view 1-D operands as matrices: a (K,) -> (1, K), b (K,) -> (K, 1)
        A = a[None, :] if a.ndim == 1 else a
        B = b[:, None] if b.ndim == 1 else b
        G = g
        if a.ndim == 1:
            G = xp.expand_dims(G, -2)
        if b.ndim == 1:
            G = xp.expand_dims(G, -1)
        ga = gb = None
        if na:
            ga = unbroadcast(G @ B.swapaxes(-1, -2), A.shape).reshape(a.shape)  # (..., M, K)
        if nb:
            if B.ndim == 2 and A.ndim > 2:      # weight-like b: one (K, N) product over all rows
                gb = A.reshape(-1, A.shape[-1]).T @ G.reshape(-1, G.shape[-1])
            else:
                gb = unbroadcast(A.swapaxes(-1, -2) @ G, B.shape)  # (..., K, N)
            gb = gb.reshape(b.shape)
        return ga, gb
