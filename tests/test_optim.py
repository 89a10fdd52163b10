"""Tests for tinygrad_lm.optim: update rules against independent float64 references written
from PyTorch's documented pseudo-code, dtype discipline, param groups, state_dict, gradient
clipping, the learning-rate schedule and every validation error. PyTorch is not needed."""
import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_lm import Tensor, cuda_available
from tinygrad_lm.optim import (SGD, AdamW, adamw_update, clip_grad_norm, clip_grad_norm_, cosine_with_warmup,
                               set_lr)


# ---- references: plain NumPy float64, straight from the torch.optim docs' pseudo-code --------

def ref_sgd(theta, grads_fn, steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's documented algorithm; returns the parameter after each step."""
    theta, b, out = theta.astype(np.float64), None, []
    for t in range(1, steps + 1):
        g = grads_fn(theta)
        if weight_decay != 0:
            g = g + weight_decay * theta
        if momentum != 0:
            b = g if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        theta = theta - lr * g
        out.append(theta)
    return out


def ref_adamw(theta, grads_fn, steps, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    """torch.optim.AdamW's documented algorithm (amsgrad off); returns theta after each step."""
    theta = theta.astype(np.float64)
    m, v, out = np.zeros_like(theta), np.zeros_like(theta), []
    for t in range(1, steps + 1):
        g = grads_fn(theta)
        theta = theta - lr * weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta)
    return out


def grad_fn(theta):
    """A gradient that depends on the parameter, so errors compound along the trajectory."""
    return 2.0 * (theta - 0.5) + 0.3 * theta ** 3


def run(opt_cls, theta0, steps, dtype=np.float64, **kw):
    """Our optimizer on one parameter, with grad_fn's gradient set by hand each step."""
    p = Tensor(theta0.astype(dtype), requires_grad=True)
    opt = opt_cls([p], **kw)
    out = []
    for _ in range(steps):
        p.grad = grad_fn(p.data.astype(np.float64)).astype(dtype)
        opt.step()
        out.append(p.data.copy())
    return p, opt, out


THETA0 = np.random.default_rng(0).standard_normal((3, 4))

SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "weight_decay": dict(lr=0.1, weight_decay=0.05),
    "all": dict(lr=0.03, momentum=0.7, dampening=0.1, weight_decay=0.02),
    "nesterov_wd": dict(lr=0.03, momentum=0.7, weight_decay=0.02, nesterov=True),
}

ADAMW_CONFIGS = {
    "default": dict(lr=1e-3),
    "no_decay": dict(lr=0.05, weight_decay=0.0),
    "big_decay": dict(lr=0.05, weight_decay=0.5),
    "betas": dict(lr=0.02, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
    "beta_zero": dict(lr=0.02, betas=(0.0, 0.0), weight_decay=0.1),
}


# ---- SGD ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SGD_CONFIGS)
def test_sgd_matches_reference(name):
    kw = SGD_CONFIGS[name]
    _, _, ours = run(SGD, THETA0, 6, **kw)
    for got, want in zip(ours, ref_sgd(THETA0, grad_fn, 6, **kw)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_sgd_momentum_by_hand():
    # lr 0.1, momentum 0.9, grads 1, 2, 3: b = 1, 2.9, 5.61 (the first buffer is g, undamped)
    p = Tensor(np.array([1.0]), requires_grad=True)
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    p.grad = np.array([1.0])
    opt.step()
    assert p.data[0] == pytest.approx(0.9)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [1.0])
    # with dampening 0.5: b = 0.9 * 1 + 0.5 * 2 = 1.9
    p.grad = np.array([2.0])
    opt.step()
    assert p.data[0] == pytest.approx(0.9 - 0.19)


def test_sgd_does_not_modify_grad():
    p = Tensor(np.ones(3), requires_grad=True)
    g = np.array([1.0, 2.0, 3.0])
    p.grad = g.copy()
    SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True).step()
    np.testing.assert_array_equal(p.grad, g)


# ---- AdamW ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ADAMW_CONFIGS)
def test_adamw_matches_reference(name):
    kw = ADAMW_CONFIGS[name]
    _, opt, ours = run(AdamW, THETA0, 8, **kw)
    beta1, beta2 = kw.get("betas", (0.9, 0.999))
    ref_kw = {k: v for k, v in kw.items() if k != "betas"}
    for got, want in zip(ours, ref_adamw(THETA0, grad_fn, 8, beta1=beta1, beta2=beta2, **ref_kw)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert opt.state[opt.param_groups[0]["params"][0]]["step"] == 8


def test_adamw_first_step_by_hand():
    # Step 1: bias correction makes m_hat = g and v_hat = g^2, so the Adam step is lr * g / (|g| + eps).
    p0, g = np.array([2.0, -1.0, 0.5]), np.array([0.3, -4.0, 1e-3])
    lr, wd, eps = 0.1, 0.2, 1e-8
    p = Tensor(p0.copy(), requires_grad=True)
    p.grad = g.copy()
    AdamW([p], lr=lr, weight_decay=wd, eps=eps).step()
    np.testing.assert_allclose(p.data, p0 * (1 - lr * wd) - lr * g / (np.abs(g) + eps), rtol=1e-14)


def test_adamw_weight_decay_is_decoupled():
    # With a zero gradient the Adam part is 0 / (0 + eps) = 0: only p *= 1 - lr*wd remains. Coupled
    # (L2) decay would instead feed wd*p through Adam's normalisation and move p by ~lr per step.
    p0 = np.array([3.0, -2.0])
    p = Tensor(p0.copy(), requires_grad=True)
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    for _ in range(4):
        p.grad = np.zeros(2)
        opt.step()
    np.testing.assert_allclose(p.data, p0 * (1 - 0.1 * 0.5) ** 4, rtol=1e-14)


def test_adamw_update_function_in_place():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -0.5])
    m, v = np.zeros(2), np.zeros(2)
    ids = id(p), id(m), id(v)
    adamw_update(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    assert (id(p), id(m), id(v)) == ids
    np.testing.assert_allclose(m, 0.1 * g)
    np.testing.assert_allclose(v, 0.001 * g * g)
    np.testing.assert_allclose(p, [0.9, 2.1], rtol=1e-7)


# ---- dtype discipline -----------------------------------------------------------------------

@pytest.mark.parametrize("opt_cls,kw", [
    (SGD, dict(lr=np.float64(0.05), momentum=np.float64(0.9), dampening=np.float64(0.1),
               weight_decay=np.float64(0.01))),
    (SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    (AdamW, dict(lr=np.float64(0.01), betas=(np.float64(0.9), np.float64(0.99)), eps=np.float64(1e-8),
                 weight_decay=np.float64(0.1))),
])
def test_float32_stays_float32(opt_cls, kw):
    # np.float64 hyperparameters are the trap: under NumPy 2 they would upcast float32 arrays.
    p, opt, ours = run(opt_cls, THETA0, 5, dtype=np.float32, **kw)
    assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert all(a.dtype == np.float32 for a in ours)
    for v in opt.state[p].values():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32
    # and the float32 trajectory still follows the float64 one
    plain = {k: (tuple(map(float, v)) if isinstance(v, tuple) else v) for k, v in kw.items()}
    ref = (ref_sgd(THETA0, grad_fn, 5, **plain) if opt_cls is SGD
           else ref_adamw(THETA0, grad_fn, 5, lr=plain["lr"], beta1=0.9, beta2=0.99, weight_decay=0.1))
    np.testing.assert_allclose(ours[-1], ref[-1], rtol=1e-4, atol=1e-5)


def test_clip_keeps_float32():
    p = Tensor(np.ones(4, np.float32), requires_grad=True)
    p.grad = np.full(4, 10.0, np.float32)
    clip_grad_norm([p], np.float64(1.0))
    assert p.grad.dtype == np.float32


# ---- param groups ---------------------------------------------------------------------------

def test_param_groups_have_their_own_options():
    a0, b0 = THETA0, THETA0[:2] * 2
    a, b = Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    opt = AdamW([{"params": [a]}, {"params": [b], "lr": 0.05, "weight_decay": 0.0}], lr=0.01, weight_decay=0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)  # defaults fill what a group leaves out
    for _ in range(4):
        a.grad, b.grad = grad_fn(a.data), grad_fn(b.data)
        opt.step()
    np.testing.assert_allclose(a.data, ref_adamw(a0, grad_fn, 4, lr=0.01, weight_decay=0.3)[-1], rtol=1e-12)
    np.testing.assert_allclose(b.data, ref_adamw(b0, grad_fn, 4, lr=0.05, weight_decay=0.0)[-1], rtol=1e-12)


def test_sgd_param_groups_and_generator_input():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = SGD((g for g in [{"params": iter([a]), "lr": 1.0}, {"params": [b], "momentum": 0.5}]), lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, [0.0, 0.0])
    np.testing.assert_allclose(b.data, [0.9, 0.9])
    assert opt.param_groups[0]["params"][0] is a and opt.param_groups[1]["momentum"] == 0.5


def test_set_lr_sets_every_group():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, [0.75, 0.75])


def test_add_param_group():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = AdamW([a], lr=0.1)
    opt.add_param_group({"params": [b], "weight_decay": 0.0})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.1
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [a]})


# ---- grad None, zero_grad, closure ----------------------------------------------------------

def test_params_without_grad_are_skipped():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    opt = AdamW([a, b], lr=0.1)
    for _ in range(3):
        a.grad = np.ones(3)
        opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))
    assert b not in opt.state and opt.state[a]["step"] == 3
    b.grad = np.ones(3)  # its first update: its own step count starts at 1
    opt.step()
    assert opt.state[b]["step"] == 1 and opt.state[a]["step"] == 4
    np.testing.assert_allclose(b.data, ref_adamw(np.ones(3), lambda t: np.ones(3), 1, lr=0.1)[-1])


def test_sgd_skips_grad_none():
    a = Tensor(np.ones(3), requires_grad=True)
    SGD([a], lr=0.1, momentum=0.9, weight_decay=0.1).step()
    np.testing.assert_array_equal(a.data, np.ones(3))


def test_zero_grad():
    a = Tensor(np.ones(3), requires_grad=True)
    opt = SGD([a], lr=0.1)
    a.grad = np.ones(3)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    opt.zero_grad()
    assert a.grad is None


def test_step_with_closure_returns_loss():
    x = Tensor(np.array([3.0]), requires_grad=True)
    opt = SGD([x], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 9.0
    np.testing.assert_allclose(x.data, [1.5])  # 3 - 0.25 * 6


def test_grad_shape_mismatch_is_an_error():
    a = Tensor(np.ones(3), requires_grad=True)
    a.grad = np.ones(4)
    with pytest.raises(ValueError, match="does not match"):
        SGD([a], lr=0.1).step()


# ---- state_dict -----------------------------------------------------------------------------

def _two_group_setup(opt_cls, kw):
    a, b = Tensor(THETA0.copy(), requires_grad=True), Tensor(THETA0[0].copy() * 3, requires_grad=True)
    opt = opt_cls([{"params": [a]}, {"params": [b], "lr": kw["lr"] * 2}], **kw)
    return (a, b), opt


def _train(params, opt, steps):
    for _ in range(steps):
        for p in params:
            p.grad = grad_fn(p.data)
        opt.step()


@pytest.mark.parametrize("opt_cls,kw", [(AdamW, dict(lr=0.01, weight_decay=0.1)),
                                        (SGD, dict(lr=0.01, momentum=0.9, nesterov=True))])
def test_state_dict_round_trip_continues_exactly(opt_cls, kw):
    ref_params, ref_opt = _two_group_setup(opt_cls, kw)
    _train(ref_params, ref_opt, 6)  # uninterrupted

    params, opt = _two_group_setup(opt_cls, kw)
    _train(params, opt, 3)
    sd = opt.state_dict()
    assert all(isinstance(v, np.ndarray) for st_ in sd["state"].values() for k, v in st_.items() if k != "step")
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    saved = copy.deepcopy(sd)

    # a fresh optimizer on copies of the parameters, as after loading a checkpoint
    new_params = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    new_opt = opt_cls([{"params": [new_params[0]]}, {"params": [new_params[1]]}], **{**kw, "lr": 123.0})
    new_opt.load_state_dict(sd)
    assert [g["lr"] for g in new_opt.param_groups] == [kw["lr"], kw["lr"] * 2]  # options come back too
    _train(new_params, new_opt, 3)
    _train(params, opt, 3)  # the state_dict was a snapshot: training on must not change it
    for p, q, r in zip(new_params, params, ref_params):
        np.testing.assert_array_equal(p.data, r.data)
        np.testing.assert_array_equal(q.data, r.data)
    for i in sd["state"]:
        for k in sd["state"][i]:
            np.testing.assert_array_equal(sd["state"][i][k], saved["state"][i][k])


def test_state_dict_options_are_plain_python():
    # checkpoint.py writes options as JSON: NumPy scalars (np.float32 is not a float) must not leak in
    opt = AdamW([_p()], lr=np.float32(0.5), betas=(np.float32(0.5), 0.9), weight_decay=np.float64(0.1))
    opt.param_groups[0]["params"][0].grad = np.ones(2)
    opt.step()
    sd = opt.state_dict()
    json.dumps(sd["param_groups"])
    assert type(sd["param_groups"][0]["lr"]) is float and type(sd["state"][0]["step"]) is int


def test_load_state_dict_copies_and_casts():
    a = Tensor(np.ones(2, np.float32), requires_grad=True)
    opt = AdamW([a], lr=0.1)
    sd = {"state": {0: {"step": np.array(5), "exp_avg": np.ones(2), "exp_avg_sq": np.ones(2)}},
          "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.0, "params": [0]}]}
    opt.load_state_dict(sd)
    st_ = opt.state[a]
    assert st_["step"] == 5 and isinstance(st_["step"], int)
    assert st_["exp_avg"].dtype == np.float32 and st_["exp_avg"] is not sd["state"][0]["exp_avg"]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    sd["state"][0]["exp_avg"][:] = 7  # no aliasing with the loaded dict
    assert st_["exp_avg"][0] == 1


def test_load_state_dict_errors_change_nothing():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    opt = AdamW([a, b], lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    good = opt.state_dict()

    one_group = AdamW([{"params": [a]}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match="2 parameter groups but the optimizer has 1"):
        opt.load_state_dict(one_group.state_dict())
    with pytest.raises(ValueError, match="1 parameters but the optimizer has 2"):
        opt.load_state_dict(AdamW([a], lr=0.1).state_dict())
    bad = copy.deepcopy(good)
    bad["state"][1]["exp_avg"] = np.ones(4)
    bad["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"'exp_avg' has shape \(4,\) but the parameter has shape \(3,\)"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.1  # nothing was applied
    bad = copy.deepcopy(good)
    bad["state"][7] = bad["state"].pop(1)
    with pytest.raises(ValueError, match="parameter 7"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["param_groups"][0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="different optimizer"):
        opt.load_state_dict(SGD([a, b], lr=0.1).state_dict())
    sgd = SGD([a, b], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="different optimizer"):
        sgd.load_state_dict(good)
    sd = copy.deepcopy(good)
    sd["param_groups"][0].update(momentum=0.9, dampening=0.0, nesterov=False)
    with pytest.raises(ValueError, match="expects"):  # AdamW state entries in an SGD
        sgd.load_state_dict(sd)
    # the good one still loads
    opt.load_state_dict(good)
    assert opt.state[b]["step"] == 1


# ---- validation errors ----------------------------------------------------------------------

def _p(n=2, **kw):
    return Tensor(np.ones(n), requires_grad=True, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-0.1), "invalid lr: -0.1"),
    (dict(lr=math.nan), "invalid lr: nan"),
    (dict(betas=(1.0, 0.999)), "beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1: -0.1"),
    (dict(betas=(0.9, 1.5)), "beta parameter at index 1: 1.5"),
    (dict(betas=(0.9,)), "betas must be a pair"),
    (dict(eps=-1e-8), "invalid eps: -1e-08"),
    (dict(weight_decay=-0.01), "invalid weight_decay: -0.01"),
])
def test_adamw_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        AdamW([_p()], **kw)
    with pytest.raises(ValueError, match=match):  # the same check for a group's override
        AdamW([{"params": [_p()], **kw}])


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-1.0), "invalid lr: -1.0"),
    (dict(lr=0.1, momentum=-0.5), "invalid momentum: -0.5"),
    (dict(lr=0.1, dampening=1.5), "invalid dampening: 1.5"),
    (dict(lr=0.1, weight_decay=-1.0), "invalid weight_decay: -1.0"),
    (dict(lr=0.1, nesterov=True), "nesterov momentum needs momentum > 0 and dampening = 0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
])
def test_sgd_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SGD([_p()], **kw)


def test_lr_must_be_a_number():
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD([_p()], lr="0.1")
    with pytest.raises(TypeError):
        SGD([_p()])  # lr is required, as in torch


def test_param_validation():
    p = _p()
    with pytest.raises(ValueError, match="does not require grad"):
        SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    shared = Tensor(np.ones(2), requires_grad=True)
    twin = Tensor(np.ones(2), requires_grad=True)
    twin.data = shared.data
    with pytest.raises(ValueError, match="shares its data array"):
        AdamW([shared, twin])
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([{"params": []}])
    with pytest.raises(TypeError, match="single Tensor"):
        AdamW(p)
    with pytest.raises(TypeError, match="only optimize Tensors"):
        AdamW([np.ones(2)])
    with pytest.raises(ValueError, match="not a leaf"):
        AdamW([p * 2])
    with pytest.raises(ValueError, match="'params' entry"):
        AdamW([{"lr": 0.1}])


def test_set_lr_validation():
    with pytest.raises(ValueError, match="invalid lr: -1"):
        set_lr(SGD([_p()], lr=0.1), -1)


# ---- clip_grad_norm -------------------------------------------------------------------------

def _with_grads(*grads):
    ps = []
    for g in grads:
        p = Tensor(np.zeros_like(g), requires_grad=True)
        p.grad = np.array(g, dtype=np.float64)
        ps.append(p)
    return ps


def test_clip_grad_norm_value_and_scaling():
    ps = _with_grads(np.array([3.0, 0.0]), np.array([[4.0]]))  # joint 2-norm 5
    before = [p.grad.copy() for p in ps]
    total = clip_grad_norm(ps, 1.0)
    assert isinstance(total, float) and total == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    for p, g in zip(ps, before):
        np.testing.assert_allclose(p.grad, g * scale, rtol=1e-15)
    assert math.sqrt(sum((p.grad ** 2).sum() for p in ps)) == pytest.approx(1.0, rel=1e-6)


def test_clip_grad_norm_under_the_limit_leaves_grads():
    ps = _with_grads(np.array([0.3, 0.4]))
    assert clip_grad_norm(ps, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(ps[0].grad, [0.3, 0.4])


@pytest.mark.parametrize("norm_type,want", [(1.0, 10.0), (math.inf, 4.0), (3.0, (1 + 8 + 27 + 64) ** (1 / 3))])
def test_clip_grad_norm_other_norms(norm_type, want):
    ps = _with_grads(np.array([1.0, -2.0]), np.array([3.0, -4.0]))
    assert clip_grad_norm(ps, 0.5, norm_type=norm_type) == pytest.approx(want)
    assert np.abs(np.concatenate([p.grad for p in ps])).max() < 4.0


def test_clip_grad_norm_huge_norms_do_not_overflow():
    # squares overflow (float32 above ~1.8e19, float64 above ~1e154) though the norm is finite
    ps = _with_grads(np.array([1e200, 1e200]), np.array([1e200]))
    assert clip_grad_norm(ps, 1.0) == pytest.approx(math.sqrt(3) * 1e200)
    np.testing.assert_allclose(ps[0].grad, [1 / math.sqrt(3)] * 2, rtol=1e-6)
    p = Tensor(np.zeros(2, np.float32), requires_grad=True)
    p.grad = np.array([3e20, 4e20], np.float32)
    assert clip_grad_norm([p], 1.0) == pytest.approx(5e20, rel=1e-6)
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-5)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_clip_grad_norm_nonfinite_leaves_grads(bad):
    ps = _with_grads(np.array([1.0, bad]), np.array([2.0]))
    before = [p.grad.copy() for p in ps]
    total = clip_grad_norm(ps, 1.0)
    assert not math.isfinite(total)
    assert math.isnan(total) == math.isnan(bad)
    for p, g in zip(ps, before):
        np.testing.assert_array_equal(p.grad, g)
    with pytest.raises(RuntimeError, match="not clipped"):
        clip_grad_norm(ps, 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_skips_none_and_accepts_one_tensor():
    p = Tensor(np.ones(2), requires_grad=True)
    assert clip_grad_norm([p], 1.0) == 0.0
    q = _with_grads(np.array([6.0, 8.0]))[0]
    assert clip_grad_norm_(iter([p, q, q]), 5.0) == pytest.approx(10.0)  # generator, duplicate counted once
    np.testing.assert_allclose(q.grad, [3.0, 4.0], rtol=1e-6)
    assert clip_grad_norm(q, 100.0) == pytest.approx(5.0, rel=1e-6)


def test_clip_grad_norm_validation():
    ps = _with_grads(np.ones(2))
    with pytest.raises(ValueError, match="invalid max_norm: -1.0"):
        clip_grad_norm(ps, -1.0)
    with pytest.raises(ValueError, match="invalid norm_type: 0"):
        clip_grad_norm(ps, 1.0, norm_type=0)


# ---- learning-rate schedule -----------------------------------------------------------------

def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT train.py's get_lr, verbatim in substance."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_schedule_values():
    args = dict(lr=6e-4, warmup_iters=100, lr_decay_iters=1100, min_lr=6e-5)
    assert cosine_with_warmup(0, **args) == pytest.approx(6e-4 / 101)  # warmup start
    assert cosine_with_warmup(99, **args) == pytest.approx(6e-4 * 100 / 101)  # last warmup step
    assert cosine_with_warmup(100, **args) == pytest.approx(6e-4)  # warmup end: the peak
    assert cosine_with_warmup(600, **args) == pytest.approx((6e-4 + 6e-5) / 2)  # mid-decay
    assert cosine_with_warmup(1100, **args) == pytest.approx(6e-5)  # end of decay
    assert cosine_with_warmup(5000, **args) == 6e-5  # after decay
    assert cosine_with_warmup(0, 1.0, 0, 10, 0.0) == 1.0  # no warmup: starts at the peak
    assert cosine_with_warmup(5, 1.0, 5, 5, 0.1) == 0.1  # warmup == decay: straight to min_lr
    assert cosine_with_warmup(4, 1.0, 5, 5, 0.1) == pytest.approx(5 / 6)


schedule_args = st.tuples(
    st.floats(1e-6, 1.0), st.floats(0.0, 1.0), st.integers(0, 200), st.integers(0, 2000)
).map(lambda a: (a[0], a[0] * a[1], a[2], a[2] + a[3]))  # lr, min_lr <= lr, warmup <= decay


@settings(max_examples=50, deadline=None)
@given(schedule_args)
def test_schedule_matches_nanogpt_and_is_monotonic(args):
    lr, min_lr, warmup, decay = args
    steps = range(0, decay + 20)
    vals = [cosine_with_warmup(it, lr, warmup, decay, min_lr) for it in steps]
    for it, v in zip(steps, vals):
        if not (it == warmup == decay):  # nanoGPT divides 0 by 0 there
            assert v == pytest.approx(nanogpt_get_lr(it, lr, warmup, decay, min_lr), rel=1e-12, abs=1e-15)
        assert v >= 0
        assert v <= lr * (1 + 1e-12)
        if it >= warmup:
            assert v >= min_lr * (1 - 1e-12)
    tol = 1e-12 * lr
    peak = warmup if decay > warmup else max(warmup - 1, 0)  # warmup == decay: no cosine phase, step warmup is min_lr
    assert all(b >= a - tol for a, b in zip(vals[:peak + 1], vals[1:peak + 1]))  # rises to the peak
    assert all(b <= a + tol for a, b in zip(vals[warmup:], vals[warmup + 1:]))  # then never rises


@pytest.mark.parametrize("args,match", [
    ((-1, 1.0, 10, 100, 0.1), "invalid step: -1"),
    ((0, -1.0, 10, 100, 0.0), "invalid lr: -1.0"),
    ((0, 1.0, 10, 100, -0.1), "invalid min_lr: -0.1"),
    ((0, 1.0, 10, 100, 2.0), "invalid min_lr: 2.0"),
    ((0, 1.0, -1, 100, 0.1), "invalid warmup_iters: -1"),
    ((0, 1.0, 0, -5, 0.1), "invalid lr_decay_iters: -5"),
    ((0, 1.0, 200, 100, 0.1), r"warmup_iters \(200\) must be <= lr_decay_iters \(100\)"),
])
def test_schedule_validation(args, match):
    with pytest.raises(ValueError, match=match):
        cosine_with_warmup(*args)


# ---- end to end through Tensors and backward ------------------------------------------------

def test_adamw_minimises_rosenbrock():
    x = Tensor(np.array([-1.5, 2.0]), requires_grad=True)
    opt = AdamW([x], lr=0.02, weight_decay=0.0)
    for _ in range(3000):
        a, b = x[0], x[1]
        loss = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(x.data, [1.0, 1.0], atol=1e-3)


def test_float32_quadratic_with_schedule_clipping_and_accumulation():
    rng = np.random.default_rng(1)
    A = Tensor(rng.standard_normal((8, 4)).astype(np.float32))
    y = Tensor(rng.standard_normal(8).astype(np.float32))
    w = Tensor(np.zeros(4, np.float32), requires_grad=True)
    opt = AdamW([w], lr=0.1, weight_decay=0.0)
    for it in range(400):
        set_lr(opt, cosine_with_warmup(it, 0.1, 20, 400, 0.001))
        for half in (slice(0, 4), slice(4, 8)):  # two micro-batches accumulate into w.grad
            r = A[half] @ w - y[half]
            ((r * r).sum() / 8).backward()
        clip_grad_norm([w], 10.0)
        opt.step()
        opt.zero_grad()
    assert w.data.dtype == np.float32
    w_star = np.linalg.lstsq(A.data.astype(np.float64), y.data.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(w.data, w_star, atol=1e-3)


# ---- optional: other devices and PyTorch itself -----------------------------------------------

@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a GPU")
@pytest.mark.parametrize("opt_cls,kw", [(AdamW, dict(lr=0.01, weight_decay=0.1)),
                                        (SGD, dict(lr=0.01, momentum=0.9))])
def test_cuda_matches_cpu(opt_cls, kw):
    import cupy
    cpu = Tensor(THETA0.astype(np.float32), requires_grad=True)
    gpu = Tensor(cupy.asarray(THETA0.astype(np.float32)), requires_grad=True)
    o_cpu, o_gpu = opt_cls([cpu], **kw), opt_cls([gpu], **kw)
    for _ in range(3):
        cpu.grad = grad_fn(cpu.data)
        gpu.grad = cupy.asarray(cpu.grad)
        o_cpu.step()
        o_gpu.step()
    assert gpu.data.dtype == np.float32
    np.testing.assert_allclose(gpu.data.get(), cpu.data, rtol=1e-6, atol=1e-7)
    clip_grad_norm([gpu], 0.1)
    sd = o_gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd["state"][0].values() if not isinstance(v, int))
    o_gpu.load_state_dict(sd)
    assert all(isinstance(v, cupy.ndarray) for v in o_gpu.state[gpu].values() if not isinstance(v, int))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_matches_torch_if_installed(name):
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.05, weight_decay=0.1) if name == "adamw" else dict(lr=0.05, momentum=0.9, nesterov=True)
    tp = torch.tensor(THETA0, requires_grad=True)
    t_opt = (torch.optim.AdamW if name == "adamw" else torch.optim.SGD)([tp], **kw)
    p, _, ours = run(AdamW if name == "adamw" else SGD, THETA0, 5, **kw)
    for _ in range(5):
        tp.grad = torch.from_numpy(grad_fn(tp.detach().numpy()))
        t_opt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
