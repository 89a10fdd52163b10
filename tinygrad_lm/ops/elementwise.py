"""Elementwise ops. Binary ops broadcast; their backward sums the gradient back with unbroadcast."""
from ..backend import unbroadcast, xp_of
from ..tensor import Function


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):  # d(a+b) = da + db
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        return (unbroadcast(g, sa) if na else None), (unbroadcast(g, sb) if nb else None)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):  # d(a-b) = da - db
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        return (unbroadcast(g, sa) if na else None), (unbroadcast(-g, sb) if nb else None)


class Mul(Function):
    def forward(self, a, b):
        na, nb = self.needs_input_grad
        # keep only what a gradient needs: x * constant holds no reference to x
        self.a, self.b = (a if nb else None), (b if na else None)
        self.shapes = a.shape, b.shape
        return a * b

    def backward(self, g):  # d(ab) = b da + a db
        a, b = self.a, self.b
        na, nb = self.needs_input_grad
        sa, sb = self.shapes
        return (unbroadcast(g * b, sa) if na else None), (unbroadcast(g * a, sb) if nb else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):  # d(a/b) = da / b - a db / b^2
        a, b = self.a, self.b
        na, nb = self.needs_input_grad
        ga = g / b
        return (unbroadcast(ga, a.shape) if na else None), (unbroadcast(-ga * a / b, b.shape) if nb else None)


class Pow(Function):
    """a ** b with both tensors; the gradient w.r.t. b is taken as 0 where a <= 0 (log undefined)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a ** b
        return self.out

    def backward(self, g):  # d(a^b) = b a^(b-1) da + a^b ln(a) db
        a, b, out = self.a, self.b, self.out
        xp = xp_of(g)
        na, nb = self.needs_input_grad
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if na else None
        gb = None
        if nb:
            pos = a > 0
            gb = unbroadcast(g * out * xp.log(xp.where(pos, a, 1)) * pos, b.shape)
        return ga, gb


class PowScalar(Function):
    def forward(self, x, exponent):
        if hasattr(exponent, "item"):  # a NumPy scalar would promote float32 to its own dtype
            exponent = exponent.item()
        self.x, self.p = x, exponent
        return x ** exponent

    def backward(self, g):  # d(x^p) = p x^(p-1) dx
        p, x = self.p, self.x
        if p == 2:
            return g * 2 * x
        if p == 0:  # x^0 is constant; p x^(p-1) would be 0 * inf = NaN at x = 0
            return g * 0
        return g * p * x ** (p - 1)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class Exp(Function):
    def forward(self, x):
        self.out = xp_of(x).exp(x)
        return self.out

    def backward(self, g):  # d e^x = e^x dx
        return g * self.out


class Log(Function):
    def forward(self, x):
        self.x = x
        return xp_of(x).log(x)

    def backward(self, g):  # d ln x = dx / x
        return g / self.x


class Sqrt(Function):
    def forward(self, x):
        self.out = xp_of(x).sqrt(x)
        return self.out

    def backward(self, g):  # d sqrt(x) = dx / (2 sqrt(x))
        return g / (2 * self.out)


class Abs(Function):
    def forward(self, x):
        self.x = x
        return xp_of(x).abs(x)

    def backward(self, g):  # d|x| = sign(x) dx
        return g * xp_of(g).sign(self.x)


class Tanh(Function):
    def forward(self, x):
        self.out = xp_of(x).tanh(x)
        return self.out

    def backward(self, g):  # d tanh x = (1 - tanh^2 x) dx
        return g * (1 - self.out * self.out)


class Sigmoid(Function):
    def forward(self, x):
        xp = xp_of(x)
        # exp of a non-positive number only, so large |x| never overflows
        e = xp.exp(-xp.abs(x))
        self.out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.out

    def backward(self, g):  # d s(x) = s (1 - s) dx
        return g * self.out * (1 - self.out)


class Relu(Function):
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, g):  # d relu(x) = [x > 0] dx
        return g * self.mask


def _tie_weights(a, b, dtype):
    """Share of the gradient that goes to a in maximum(a, b): 1 where a wins, 1/2 at ties."""
    return (a > b).astype(dtype) + (a == b).astype(dtype) * dtype.type(0.5)


class Maximum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return xp_of(a).maximum(a, b)

    def backward(self, g):
        wa = _tie_weights(self.a, self.b, g.dtype)
        return unbroadcast(g * wa, self.a.shape), unbroadcast(g * (1 - wa), self.b.shape)


class Minimum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return xp_of(a).minimum(a, b)

    def backward(self, g):
        wa = _tie_weights(self.b, self.a, g.dtype)
        return unbroadcast(g * wa, self.a.shape), unbroadcast(g * (1 - wa), self.b.shape)


class Clip(Function):
    def forward(self, x, lo, hi):
        self.mask = (x >= (lo if lo is not None else -float("inf"))) & (x <= (hi if hi is not None else float("inf")))
        return xp_of(x).clip(x, lo, hi).astype(x.dtype, copy=False)

    def backward(self, g):  # the gradient passes inside [lo, hi]
        return g * self.mask


class Where(Function):
    def forward(self, a, b, cond):
        self.cond, self.shapes = cond, (a.shape, b.shape)
        return xp_of(a).where(cond, a, b)

    def backward(self, g):
        xp = xp_of(g)
        zero = g.dtype.type(0)
        na, nb = self.needs_input_grad
        ga = unbroadcast(xp.where(self.cond, g, zero), self.shapes[0]) if na else None
        gb = unbroadcast(xp.where(self.cond, zero, g), self.shapes[1]) if nb else None
        return ga, gb
