"""RLHF losses and heads (tinygrad_lm.align.losses, .heads), each against numbers worked out by hand
or a plain NumPy formula, plus float64 gradchecks of everything that is differentiated."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_lm as tg
from tinygrad_lm.align.heads import ScalarHead, last_token_index, pick_last
from tinygrad_lm.align.losses import (AdaptiveKLController, FixedKLController, bradley_terry_loss, dpo_loss,
                                      entropy_from_logits, gae, kl_penalty, masked_mean, pair_accuracy,
                                      ppo_policy_loss, ppo_value_loss, sequence_logprobs, softplus, token_logprobs,
                                      whiten)
from tinygrad_lm.gradcheck import gradcheck


def T(x, grad=False, dtype=np.float64):
    return tg.tensor(np.asarray(x, dtype=dtype), requires_grad=grad)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---- log-probs of given tokens ------------------------------------------------------------------

def test_token_and_sequence_logprobs_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (3, 5))
    targets[0, :2] = -1          # a prompt: not scored
    targets[2, :] = -1           # nothing scored at all
    lp = np.take_along_axis(np_log_softmax(logits.astype(np.float64)), np.maximum(targets, 0)[..., None], -1)[..., 0]
    lp = np.where(targets != -1, lp, 0)
    tok = token_logprobs(T(logits, dtype=np.float32), targets)
    seq = sequence_logprobs(T(logits, dtype=np.float32), targets)
    assert tok.dtype == seq.dtype == np.float32 and tok.shape == (3, 5) and seq.shape == (3,)
    np.testing.assert_allclose(tok.numpy(), lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seq.numpy(), lp.sum(axis=1), rtol=1e-5, atol=1e-5)
    assert seq.numpy()[2] == 0
    # a mask drops positions exactly as -1 targets do
    mask = rng.random((3, 5)) < 0.6
    masked = sequence_logprobs(T(logits, dtype=np.float32), targets, mask=mask).numpy()
    np.testing.assert_allclose(masked, np.where(mask, lp, 0).sum(axis=1), rtol=1e-5, atol=1e-5)


def test_gradcheck_sequence_logprobs():
    rng = np.random.default_rng(1)
    logits = T(rng.standard_normal((2, 3, 4)), grad=True)
    targets = np.array([[1, -1, 3], [0, 2, -1]])
    assert gradcheck(lambda z: sequence_logprobs(z, targets), [logits])
    assert gradcheck(lambda z: sequence_logprobs(z, targets, mask=np.array([[1, 1, 0], [1, 1, 1]])), [logits])


# ---- Bradley-Terry -------------------------------------------------------------------------------

def test_bradley_terry_by_hand():
    rc, rr = T([2.0, 0.5], grad=True), T([1.0, 1.5], grad=True)
    loss = bradley_terry_loss(rc, rr)
    # margins d = +1 and -1: -log sigmoid(d) = log(1 + exp(-d))
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    # d/dr_c = -sigmoid(-d) / N
    s = [1 / (1 + math.exp(1)), 1 / (1 + math.exp(-1))]
    np.testing.assert_allclose(rc.grad, [-s[0] / 2, -s[1] / 2], rtol=1e-12)
    np.testing.assert_allclose(rr.grad, [s[0] / 2, s[1] / 2], rtol=1e-12)
    assert pair_accuracy(rc, rr) == 0.5
    assert pair_accuracy([1.0, 2.0], [1.0, 1.0]) == 0.5   # a tie is not a win


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bradley_terry_is_stable_for_huge_margins(dtype):
    rc, rr = T([1000.0, -1000.0, 0.0], grad=True, dtype=dtype), T([0.0, 0.0, 0.0], dtype=dtype)
    per_pair = softplus(rr - rc)
    assert per_pair.dtype == dtype
    np.testing.assert_allclose(per_pair.numpy(), [0.0, 1000.0, math.log(2)], rtol=1e-6)
    loss = bradley_terry_loss(rc, rr)
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(rc.grad).all()
    # gradient -sigmoid(-d) / 3: 0 for d = 1000, -1/3 for d = -1000, -1/6 at d = 0 (not 0: the tie case)
    np.testing.assert_allclose(rc.grad, [0.0, -1 / 3, -1 / 6], rtol=1e-6, atol=1e-30)


def test_gradcheck_bradley_terry():
    rng = np.random.default_rng(2)
    rc, rr = T(rng.standard_normal(5) * 3, grad=True), T(rng.standard_normal(5) * 3, grad=True)
    assert gradcheck(bradley_terry_loss, [rc, rr])


# ---- DPO ---------------------------------------------------------------------------------------

def test_dpo_by_hand():
    beta = 0.1
    pc, pr = T([-10.0, -5.0], grad=True), T([-12.0, -4.0], grad=True)
    rc, rr = np.array([-11.0, -6.0]), np.array([-11.0, -6.0])
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta)
    # pair 0: chosen reward 0.1 * 1 = 0.1, rejected 0.1 * -1 = -0.1, margin 0.2
    # pair 1: chosen reward 0.1 * 1 = 0.1, rejected 0.1 * 2 = 0.2, margin -0.1
    want = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert stats["rewards/chosen"] == pytest.approx(0.1)
    assert stats["rewards/rejected"] == pytest.approx(0.05)
    assert stats["rewards/margin"] == pytest.approx(0.05)
    assert stats["rewards/accuracy"] == 0.5
    loss.backward()
    # dL/dpc_i = -beta sigmoid(-margin_i) / B, dL/dpr_i = +beta sigmoid(-margin_i) / B
    sig = np.array([1 / (1 + math.exp(0.2)), 1 / (1 + math.exp(-0.1))])
    np.testing.assert_allclose(pc.grad, -beta * sig / 2, rtol=1e-12)
    np.testing.assert_allclose(pr.grad, beta * sig / 2, rtol=1e-12)


def test_dpo_gradient_at_the_start_is_not_zero():
    """At step 0 the policy is the reference, so every margin is exactly 0: -log sigmoid(0) = log 2
    and the gradient is beta/2 per pair, not 0."""
    pc, pr = T([-3.0, -7.0], grad=True, dtype=np.float32), T([-4.0, -2.0], grad=True, dtype=np.float32)
    ref_c, ref_r = pc.detach(), pr.detach()
    loss, stats = dpo_loss(pc, pr, ref_c, ref_r, beta=0.5)
    assert loss.dtype == np.float32
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["rewards/margin"] == 0 and stats["rewards/accuracy"] == 0
    loss.backward()
    np.testing.assert_allclose(pc.grad, [-0.125, -0.125])
    np.testing.assert_allclose(pr.grad, [0.125, 0.125])


def test_dpo_float32_with_float64_references_stays_float32():
    pc, pr = T([-3.0], grad=True, dtype=np.float32), T([-4.0], grad=True, dtype=np.float32)
    loss, _ = dpo_loss(pc, pr, np.array([-3.5]), np.array([-3.5]))
    assert loss.dtype == np.float32


def test_gradcheck_dpo():
    rng = np.random.default_rng(3)
    pc, pr = T(rng.standard_normal(4) * 5, grad=True), T(rng.standard_normal(4) * 5, grad=True)
    rc, rr = rng.standard_normal(4) * 5, rng.standard_normal(4) * 5
    assert gradcheck(lambda a, b: dpo_loss(a, b, rc, rr, beta=0.3)[0], [pc, pr])


# ---- GAE and whitening ---------------------------------------------------------------------------

def direct_gae(r, v, start, end, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the episode [start, end); V past its end is 0."""
    adv = np.zeros(len(r))
    for t in range(start, end):
        for k in range(t, end):
            next_v = v[k + 1] if k + 1 < end else 0.0
            adv[t] += (gamma * lam) ** (k - t) * (r[k] + gamma * next_v - v[k])
    return adv


@settings(max_examples=40)
@given(st.data())
def test_gae_equals_the_direct_sum(data):
    B, T_ = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 7))
    gamma, lam = data.draw(st.floats(0.5, 1.0)), data.draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    r, v = rng.standard_normal((B, T_)), rng.standard_normal((B, T_))
    mask = np.zeros((B, T_), bool)
    spans = []
    for b in range(B):   # one contiguous block per row: right padding, left padding, or empty
        s = data.draw(st.integers(0, T_))
        e = data.draw(st.integers(s, T_))
        mask[b, s:e] = True
        spans.append((s, e))
    adv, ret = gae(r, v, mask=mask, gamma=gamma, lam=lam)
    want = np.stack([direct_gae(r[b], v[b], s, e, gamma, lam) for b, (s, e) in enumerate(spans)])
    np.testing.assert_allclose(adv, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret, np.where(mask, want + v, 0), rtol=1e-10, atol=1e-10)
    assert adv.dtype == np.float64


def test_gae_by_hand_and_dones():
    r = np.array([[0.0, 0.0, 1.0, 9.0]], np.float32)
    v = np.array([[0.5, 0.5, 0.5, 9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]])
    # gamma = lam = 1: A_t = sum of rewards from t on - V_t (Monte Carlo); the padded step is ignored
    adv, ret = gae(r, v, mask=mask, gamma=1.0, lam=1.0)
    assert adv.dtype == np.float32
    np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]])
    # lam = 0: one-step TD errors
    adv, _ = gae(r, v, mask=mask, gamma=1.0, lam=0.0)
    np.testing.assert_allclose(adv, [[0.0, 0.0, 0.5, 0.0]])
    # a done after step 0 ends that episode: A_0 = r_0 - V_0
    adv, _ = gae(r, v, mask=mask, dones=np.array([[1, 0, 0, 0]]), gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[-0.5, 0.5, 0.5, 0.0]])


def test_whiten():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6)) * 4 + 2
    mask = rng.random((3, 6)) < 0.7
    w = whiten(x, mask)
    assert w[mask].mean() == pytest.approx(0, abs=1e-12)
    assert w[mask].std(ddof=1) == pytest.approx(1, rel=1e-6)   # Bessel's variance, as TRL
    assert (w[~mask] == 0).all()
    scaled = whiten(x, mask, shift_mean=False)
    assert scaled[mask].mean() == pytest.approx(x[mask].mean())
    np.testing.assert_allclose(scaled[mask] - scaled[mask].mean(), w[mask], atol=1e-12)
    # TRL's formula, written out
    m, var = x[mask].mean(), x[mask].var(ddof=1)
    np.testing.assert_allclose(whiten(x)[...], (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-8))
    np.testing.assert_allclose(w[mask], (x[mask] - m) / np.sqrt(var + 1e-8))
    assert (whiten(x, np.zeros_like(mask)) == 0).all()


# ---- PPO losses ----------------------------------------------------------------------------------

def ppo_case():
    # ratios 1.5, 0.5, 1.5, 0.5, 1.1 with advantages +2, -2, -2, +2, +1; clip 0.2
    old = np.log(np.array([[0.2, 0.4, 0.2, 0.4, 0.5]]))
    new = old + np.log(np.array([[1.5, 0.5, 1.5, 0.5, 1.1]]))
    adv = np.array([[2.0, -2.0, -2.0, 2.0, 1.0]])
    return new, old, adv


def test_ppo_policy_loss_by_hand_and_clipped_gradients():
    new, old, adv = ppo_case()
    lp = T(new, grad=True)
    loss, stats = ppo_policy_loss(lp, old, adv, mask=np.ones((1, 5)), clip=0.2)
    # per token max(-A r, -A clip(r)):
    #  A=+2 r=1.5: max(-3.0, -2.4) = -2.4 (clipped: no gradient)
    #  A=-2 r=0.5: max( 1.0,  1.6) =  1.6 (clipped: no gradient)
    #  A=-2 r=1.5: max( 3.0,  2.4) =  3.0 (unclipped: the pessimistic term keeps its gradient)
    #  A=+2 r=0.5: max(-1.0, -1.6) = -1.0 (unclipped)
    #  A=+1 r=1.1: -1.1 (inside the clip range)
    assert loss.item() == pytest.approx((-2.4 + 1.6 + 3.0 - 1.0 - 1.1) / 5)
    loss.backward()
    # d(-A r)/d log pi = -A r, divided by the 5 tokens
    np.testing.assert_allclose(lp.grad, [[0.0, 0.0, 3.0 / 5, -1.0 / 5, -1.1 / 5]], atol=1e-12)
    assert stats["policy/clipfrac"] == pytest.approx(2 / 5)
    ratios = np.array([1.5, 0.5, 1.5, 0.5, 1.1])
    assert stats["policy/ratio"] == pytest.approx(ratios.mean())
    assert stats["policy/approxkl"] == pytest.approx(((ratios - 1) - np.log(ratios)).mean())


def test_ppo_policy_loss_mask():
    new, old, adv = ppo_case()
    mask = np.array([[0, 0, 1, 1, 0]])
    loss, stats = ppo_policy_loss(T(new, grad=True), old, adv, mask=mask)
    assert loss.item() == pytest.approx((3.0 - 1.0) / 2)
    assert stats["policy/clipfrac"] == 0
    # the ratio at the start of an update is 1 everywhere: the loss is -mean(A)
    loss, stats = ppo_policy_loss(T(old, grad=True, dtype=np.float32), old, adv)
    assert loss.dtype == np.float32 and loss.item() == pytest.approx(-adv.mean())
    assert stats["policy/approxkl"] == 0 and stats["policy/ratio"] == pytest.approx(1)


def test_ppo_value_loss_by_hand():
    old = np.array([[1.0, 1.0, 1.0, 1.0]])
    ret = np.array([[2.0, 0.0, 2.0, 1.1]])
    v = T([[1.5, 1.5, 0.5, 1.1]], grad=True)
    loss, stats = ppo_value_loss(v, old, ret, mask=np.ones((1, 4)), clip=0.2)
    # v_clip = 1.2, 1.2, 0.8, 1.1
    #  v=1.5 R=2: (0.5^2, 0.8^2) -> 0.64 clipped (no gradient)
    #  v=1.5 R=0: (1.5^2, 1.2^2) -> 2.25 unclipped
    #  v=0.5 R=2: (1.5^2, 1.2^2) -> 2.25 unclipped
    #  v=1.1 R=1.1: 0 inside the range
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25 + 2.25 + 0.0) / 4)
    loss.backward()
    # d 0.5 (v - R)^2 / dv = (v - R), over 4 tokens
    np.testing.assert_allclose(v.grad, [[0.0, 1.5 / 4, -1.5 / 4, 0.0]], atol=1e-12)
    assert stats["value/clipfrac"] == pytest.approx(1 / 4)
    loss, _ = ppo_value_loss(T([[1.5, 1.5, 0.5, 1.1]], grad=True), old, ret, mask=np.array([[0, 1, 1, 0]]))
    assert loss.item() == pytest.approx(0.5 * 2.25)


def test_gradcheck_ppo_losses():
    rng = np.random.default_rng(5)
    old = rng.standard_normal((2, 4)) - 2
    new = old + rng.uniform(-0.5, 0.5, (2, 4))
    # keep every ratio away from the clip edges, where the loss has a kink
    r = np.exp(new - old)
    assert (np.minimum(np.abs(r - 0.8), np.abs(r - 1.2)) > 1e-3).all()
    adv, mask = rng.standard_normal((2, 4)), np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert gradcheck(lambda lp: ppo_policy_loss(lp, old, adv, mask)[0], [T(new, grad=True)])
    ov, ret = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    v = ov + rng.uniform(-0.5, 0.5, (2, 4))
    assert (np.abs(np.abs(v - ov) - 0.2) > 1e-3).all()
    assert gradcheck(lambda x: ppo_value_loss(x, ov, ret, mask)[0], [T(v, grad=True)])


def test_masked_mean():
    x = T([[1.0, 2.0, 3.0]], grad=True)
    assert masked_mean(x, np.array([[True, False, True]])).item() == 2.0
    assert masked_mean(x, np.zeros((1, 3))).item() == 0.0


# ---- KL estimators and controllers ---------------------------------------------------------------

def test_kl_estimators_formulas():
    rng = np.random.default_rng(6)
    lp, lq = rng.standard_normal(50) - 2, rng.standard_normal(50) - 2
    np.testing.assert_allclose(kl_penalty(lp, lq, "k1"), lp - lq)
    np.testing.assert_allclose(kl_penalty(lp, lq, "k2"), 0.5 * (lp - lq) ** 2)
    ratio = np.exp(lq - lp)
    np.testing.assert_allclose(kl_penalty(lp, lq, "k3"), (ratio - 1) - np.log(ratio), rtol=1e-10, atol=1e-14)
    assert (kl_penalty(lp, lq, "k3") >= 0).all()
    assert kl_penalty(lp.astype(np.float32), lq.astype(np.float32), "k3").dtype == np.float32
    tiny = kl_penalty(np.array([0.0], np.float32), np.array([1e-4], np.float32), "k3")
    assert tiny[0] == pytest.approx(0.5e-8, rel=1e-3)   # no cancellation near r = 1
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(lp, lq, "k4")


def test_kl_estimators_are_unbiased_on_samples():
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    exact = float((p * np.log(p / q)).sum())
    x = np.random.default_rng(7).choice(3, size=200_000, p=p)
    lp, lq = np.log(p)[x], np.log(q)[x]
    for kind in ("k1", "k3"):
        k = kl_penalty(lp, lq, kind)
        assert abs(k.mean() - exact) < 5 * k.std() / math.sqrt(len(k)), kind
    k2 = kl_penalty(lp, lq, "k2")   # biased, but close for nearby distributions
    assert k2.mean() == pytest.approx(exact, rel=0.05)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # current 7: error 7/6 - 1 = 1/6 (inside the clip)
    assert c.update(7.0, n_steps=256) == pytest.approx(0.2 * (1 + (1 / 6) * 256 / 10000))
    before = c.value
    c.update(100.0, n_steps=100)   # error clipped to +0.2
    assert c.value == pytest.approx(before * (1 + 0.2 * 100 / 10000))
    before = c.value
    c.update(0.0, n_steps=100)     # error -1 clipped to -0.2
    assert c.value == pytest.approx(before * (1 - 0.2 * 100 / 10000))
    d = AdaptiveKLController(1.0, 6.0, 10000)
    d.load_state_dict(c.state_dict())
    assert d.value == c.value
    f = FixedKLController(0.05)
    assert f.update(100.0, 1000) == 0.05 and f.value == 0.05


# ---- entropy -------------------------------------------------------------------------------------

def test_entropy_from_logits():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((2, 3, 5)) * 2
    logp = np_log_softmax(z)
    want = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(entropy_from_logits(T(z)).numpy(), want, rtol=1e-12)
    mask = np.array([[1, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(entropy_from_logits(T(z), mask).numpy(), want * mask, rtol=1e-12)
    assert entropy_from_logits(T(np.zeros((1, 1, 5)))).item() == pytest.approx(math.log(5))
    zt = T(z, grad=True)
    assert gradcheck(lambda x: entropy_from_logits(x, mask), [zt])


# ---- heads ---------------------------------------------------------------------------------------

def test_last_token_index():
    np.testing.assert_array_equal(last_token_index(np.array([3, 1, 5])), [2, 0, 4])
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])   # right, left padding
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 0])
    np.testing.assert_array_equal(last_token_index(mask.astype(bool)), [2, 4, 0])
    with pytest.raises(ValueError, match="no tokens"):
        last_token_index(np.array([[1, 0], [0, 0]]))


def test_scalar_head_shapes_and_init():
    tg.manual_seed(0)
    head = ScalarHead(64)
    assert head(tg.randn(2, 3, 64)).shape == (2, 3) and head(tg.randn(4, 64)).shape == (4,)
    assert head.weight.shape == (1, 64) and (head.bias.numpy() == 0).all()
    assert abs(head.weight.numpy().std() - 1 / math.sqrt(65)) < 0.05
    assert set(head.state_dict()) == {"weight", "bias"}
    value = ScalarHead(64, zero_init=True)
    assert (value(tg.randn(2, 3, 64)).numpy() == 0).all()


def test_pick_last_and_gradcheck_with_the_head():
    rng = np.random.default_rng(9)
    h = T(rng.standard_normal((3, 4, 5)), grad=True)
    idx = last_token_index(np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]]))
    picked = pick_last(h, idx)
    np.testing.assert_array_equal(picked.numpy(), h.numpy()[[0, 1, 2], [1, 3, 2]])
    head = ScalarHead(5).double()

    def score(hidden, w, b):
        head.weight, head.bias = w, b   # gradcheck's float64 copies stand in for the parameters
        return head(pick_last(hidden, idx))

    assert gradcheck(score, [h, head.weight, head.bias])
    # only the picked positions get a gradient
    h2 = T(h.numpy(), grad=True)
    pick_last(h2, idx).sum().backward()
    got = np.abs(h2.grad).sum(-1) > 0
    np.testing.assert_array_equal(got, [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
