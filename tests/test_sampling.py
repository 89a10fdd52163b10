"""Sampling: greedy, temperature, top-k and top-p never emit an excluded token; argument checks."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_lm.sampling import check_sampling_args, filter_logits, sample


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ConstantRng:
    """A stand-in generator whose uniform draws are all ``u`` (to hit the ends of [0, 1))."""

    def __init__(self, u):
        self.u = u

    def random(self, shape):
        return np.full(shape, self.u)


# ---- what may be emitted: an independent reference ---------------------------------------------

def never_allowed(logits, temperature, top_k, top_p, margin=1e-9):
    """(V,) bool: tokens that no correct top-k/top-p sampler may emit for this row.

    top-k: a token strictly below the k-th largest logit. top-p (on the tempered, top-k-filtered
    distribution): a token whose strictly more likely tokens already hold >= top_p of the mass
    (how ties are ordered cannot save it). ``margin`` keeps rounding at the boundary out."""
    z = logits / temperature
    banned = ~np.isfinite(z)
    if top_k is not None and top_k < z.size:
        kth = np.sort(z)[::-1][top_k - 1]
        banned |= z < kth
    if top_p is not None:
        p = softmax(np.where(banned, -np.inf, z))
        mass_above = np.array([p[p > p[i]].sum() for i in range(z.size)])
        banned |= mass_above >= top_p + margin
    return banned


@st.composite
def logits_rows(draw, max_v=12):
    """(1..3, 1..max_v) float64 logits: continuous values, or half-integers (many ties), with some
    -inf (masked) entries; every row keeps at least one finite value."""
    B, V = draw(st.integers(1, 3)), draw(st.integers(1, max_v))
    if draw(st.booleans()):
        x = draw(hnp.arrays(np.float64, (B, V), elements=st.floats(-6, 6, allow_subnormal=False)))
    else:
        x = draw(hnp.arrays(np.int64, (B, V), elements=st.integers(-6, 6))) / 2.0
    if draw(st.booleans()):
        masked = draw(hnp.arrays(np.bool_, (B, V)))
        masked[np.arange(B), draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, V - 1)))] = False
        x = np.where(masked, -np.inf, x)
    return x


@given(logits=logits_rows(), top_k=st.one_of(st.none(), st.integers(1, 14)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)), temperature=st.floats(0.05, 5.0),
       seed=st.integers(0, 2**32 - 1))
def test_top_k_top_p_never_emit_excluded_tokens(logits, top_k, top_p, temperature, seed):
    n = 300  # samples per row: tile the rows, sample() draws every row independently
    B, V = logits.shape
    got = sample(np.repeat(logits, n, axis=0), temperature, top_k, top_p, np.random.default_rng(seed))
    assert got.shape == (B * n,) and got.dtype.kind == "i"
    got = got.reshape(B, n)
    assert ((got >= 0) & (got < V)).all()
    kept = np.isfinite(filter_logits(logits / temperature, top_k, top_p))
    for b in range(B):
        banned = never_allowed(logits[b], temperature, top_k, top_p)
        assert not banned[got[b]].any(), (logits[b], got[b])
        assert not (kept[b] & banned).any()   # the public filter keeps no banned token either
        assert kept[b].any()


@given(logits=logits_rows(), top_k=st.one_of(st.none(), st.integers(1, 14)),
       top_p=st.one_of(st.none(), st.floats(1e-6, 1.0)))
def test_filter_keeps_the_smallest_sufficient_set(logits, top_k, top_p):
    out = filter_logits(logits, top_k, top_p)
    assert out.dtype == np.float64 and out.shape == logits.shape
    kept = np.isfinite(out)
    assert kept.any(axis=-1).all()                                   # at least one token survives
    assert (out[kept] == logits[kept]).all()                         # kept logits are unchanged
    for b in range(logits.shape[0]):
        z = logits[b]
        after_k = np.isfinite(filter_logits(z[None], top_k, None)[0])
        if top_k is not None:
            finite = np.sort(z[np.isfinite(z)])[::-1]
            if top_k <= finite.size:
                assert (z[after_k] >= finite[top_k - 1]).all()
                assert after_k.sum() >= top_k                        # ties at the boundary all kept
        if top_p is not None and top_p < 1:
            p = softmax(np.where(after_k, z, -np.inf))
            mass = p[kept[b]].sum()
            assert mass >= top_p - 1e-9                              # enough mass ...
            assert mass - p[kept[b]].min() < top_p + 1e-9             # ... and nothing kept beyond need
            # the kept set is the most likely tokens: nothing left out beats something kept
            assert p[~kept[b]].max(initial=0) <= p[kept[b]].min()


def test_top_k_ties_at_the_boundary_are_kept():
    out = filter_logits(np.array([[3.0, 2.0, 2.0, 1.0]]), top_k=2)
    np.testing.assert_array_equal(np.isfinite(out[0]), [True, True, True, False])
    out = filter_logits(np.array([[2.0, 1.0, 2.0]]), top_k=1)
    np.testing.assert_array_equal(np.isfinite(out[0]), [True, False, True])
    out = filter_logits(np.array([[0.5, 0.5, 0.5]]), top_k=1)
    assert np.isfinite(out).all()
    # top_k >= V keeps everything
    assert np.isfinite(filter_logits(np.array([[1.0, 2.0]]), top_k=5)).all()


def test_top_k_ranks_the_raw_logits_exactly():
    # 0 < 1e-36 < 1: top_k=4 of five must drop token 0, whatever the temperature (shifting by the max
    # first would round -1 + 1e-36 to -1 and make tokens 0 and 1 tie)
    logits = np.array([[0.0, 1e-36, 1.0, 1.0, 1.0]])
    for t in (0.125, 1.0, 3.0):
        got = sample(np.repeat(logits, 2000, axis=0), t, top_k=4, rng=np.random.default_rng(0))
        assert (got != 0).all()


def test_top_p_keeps_at_least_one_token():
    logits = np.array([[0.0, 5.0, 1.0], [2.0, 2.0, 2.0]])
    out = filter_logits(logits, top_p=1e-9)
    np.testing.assert_array_equal(np.isfinite(out), [[False, True, False], [True, False, False]])
    # one dominant token: any top_p below its mass keeps only it
    out = filter_logits(np.array([[10.0, 0.0, 0.0]]), top_p=0.99)
    np.testing.assert_array_equal(np.isfinite(out[0]), [True, False, False])
    rng = np.random.default_rng(0)
    assert (sample(np.tile([[0.0, 5.0, 1.0]], (200, 1)), 1.0, top_p=1e-9, rng=rng) == 1).all()


def test_top_p_exact_boundary():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    logits = np.log(p)[None]
    # 0.4 < 0.5 <= 0.4 + 0.3: the two most likely tokens
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.5)[0]), [False, False, True, True])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.4)[0]), [False, False, False, True])
    assert np.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_sample_frequencies_follow_the_filtered_distribution():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    n = 40000
    logits = np.tile(np.log(p), (n, 1))
    cases = [
        (dict(temperature=1.0), p),
        (dict(temperature=2.0), np.sqrt(p) / np.sqrt(p).sum()),
        (dict(temperature=1.0, top_k=2), np.array([0, 0, 3, 4]) / 7),
        (dict(temperature=1.0, top_p=0.5), np.array([0, 0, 3, 4]) / 7),
        (dict(temperature=1.0, top_k=3, top_p=0.95), np.array([0, 2, 3, 4]) / 9),
    ]
    for i, (kw, expect) in enumerate(cases):
        got = sample(logits, rng=np.random.default_rng(i), **kw)
        freq = np.bincount(got, minlength=4) / n
        np.testing.assert_allclose(freq, expect, atol=0.012, err_msg=str(kw))


def test_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 17))
    np.testing.assert_array_equal(sample(logits, 0), logits.argmax(axis=-1))
    np.testing.assert_array_equal(sample(logits, 0.0, top_k=3, top_p=0.5), logits.argmax(axis=-1))
    with_mask = logits.copy()
    with_mask[:, 0] = -np.inf
    np.testing.assert_array_equal(sample(with_mask, 0), with_mask.argmax(axis=-1))


def test_tiny_temperature_acts_like_argmax():
    logits = np.array([[1.0, 3.0, 2.0, -np.inf], [-4.0, -5.0, -np.inf, -3.0]])
    for t in (1e-3, 1e-200, 1e-310):
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            np.testing.assert_array_equal(sample(logits, t, rng=np.random.default_rng(0)), [1, 3])


def test_uniform_draw_at_the_ends_never_picks_an_excluded_token():
    # token 0 has zero probability: a draw of exactly 0.0 must still land on an allowed token
    logits = np.array([[-np.inf, 0.0, 0.0, -np.inf]])
    assert sample(logits, 1.0, rng=ConstantRng(0.0))[0] == 1
    assert sample(logits, 1.0, rng=ConstantRng(np.nextafter(1.0, 0.0)))[0] == 2
    filtered = np.array([[5.0, 0.0, 4.0, 3.0]])
    assert sample(filtered, 1.0, top_k=2, rng=ConstantRng(0.0))[0] == 0
    assert sample(filtered, 1.0, top_k=2, rng=ConstantRng(np.nextafter(1.0, 0.0)))[0] == 2


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(1).standard_normal((8, 30))
    a = sample(logits, 0.8, 10, 0.9, np.random.default_rng(42))
    b = sample(logits, 0.8, 10, 0.9, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    draws = [sample(logits, 1.0, rng=np.random.default_rng(s)) for s in range(5)]
    assert any((d != draws[0]).any() for d in draws[1:])


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), "1", None, True, False])
def test_bad_temperature_raises_naming_it(bad):
    with pytest.raises(ValueError, match="temperature") as e:
        check_sampling_args(bad, None, None)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("bad", [0, -3, 1.5, 2.0, "3", True])
def test_bad_top_k_raises_naming_it(bad):
    with pytest.raises(ValueError, match="top_k") as e:
        check_sampling_args(1.0, bad, None)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), "0.5", True])
def test_bad_top_p_raises_naming_it(bad):
    with pytest.raises(ValueError, match="top_p") as e:
        check_sampling_args(1.0, None, bad)
    assert repr(bad) in str(e.value)


def test_good_args_pass_including_numpy_scalars():
    for t, k, p in [(0, None, None), (0.0, 1, 1.0), (1, 5, 1), (2.5, np.int64(3), 0.3),
                    (np.float32(0.7), np.int32(2), np.float32(0.9)), (np.float64(1e-9), None, 1e-9)]:
        check_sampling_args(t, k, p)


def test_nan_logits_raise():
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(np.array([[0.0, np.nan, 1.0]]), 1.0)
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(np.array([[0.0, 1.0], [np.nan, 0.0]]), 0)
    with pytest.raises(FloatingPointError):
        sample(np.array([[np.nan, np.nan]]), 1.0, top_k=1)
    with pytest.raises(FloatingPointError, match="no finite"):
        sample(np.array([[0.0, 1.0], [-np.inf, -np.inf]]), 1.0)


def test_sample_does_not_modify_its_input():
    logits = np.array([[1.0, 2.0, 3.0]])
    before = logits.copy()
    sample(logits, 0.5, top_k=2, top_p=0.5, rng=np.random.default_rng(0))
    filter_logits(logits, 1, 0.1)
    np.testing.assert_array_equal(logits, before)
