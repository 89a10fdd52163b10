"""The losses and estimators of RLHF: reward models, DPO and PPO.

Losses take Tensors and return Tensors, composed of existing differentiable ops (no new op, so
each gradient is the chain rule over ops that are gradchecked already). What is never
differentiated (GAE, whitening, KL penalties on rollouts, the KL controllers) is plain NumPy.

Conventions, as in our GPT: logits (B, T, V); targets (B, T) with -1 where a position is ignored;
masks (B, T), true (or 1) on the positions that count. A masked mean divides by the number of
counted positions (and is 0 when there are none).

- Bradley-Terry reward loss (Ouyang et al. 2022, eq. 1): -log sigmoid(r_chosen - r_rejected).
- DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))).
- PPO (Schulman et al. 2017) with GAE (Schulman et al. 2016), the clipped value loss and the
  KL-controlled reward of Ziegler et al. 2019, the way TRL's PPO trainer computes them.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from ..tensor import Tensor, host_array

IGNORE_INDEX = -1   # our GPT's ignore_index: a target of -1 is not scored

__all__ = ["IGNORE_INDEX", "token_logprobs", "sequence_logprobs", "softplus", "masked_mean", "bradley_terry_loss",
           "pair_accuracy", "dpo_loss", "gae", "whiten", "ppo_policy_loss", "ppo_value_loss", "kl_penalty",
           "AdaptiveKLController", "FixedKLController", "entropy_from_logits"]


# ---- helpers on Tensors -------------------------------------------------------------------------

def _array_on(x, device: str):
    """``x`` (Tensor, array, list or number) as an array on ``device``."""
    data = x.data if isinstance(x, Tensor) else x
    return backend.to_device(data if hasattr(data, "shape") else np.asarray(data), device)


def _const(x, like: Tensor) -> Tensor:
    """``x`` as a constant of ``like``'s dtype and device: never part of the graph (reference
    log-probs, advantages and masks carry no gradient), never an upcast of a float32 loss."""
    return Tensor._wrap(backend.xp_of(like.data).asarray(_array_on(x, like.device), dtype=like.dtype), False)


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) without overflow: max(x, 0) + log(1 + e^-|x|), where e^-|x| <= 1.

    The gradient is sigmoid(x) everywhere, x = 0 included: there the maximum splits its tie
    (1/2 to x) and |x| has gradient 0. (relu in place of maximum would give 0 at x = 0, where
    DPO starts: the policy is the reference, so every margin is exactly 0.)"""
    return x.maximum(0) + (1 + (-x.abs()).exp()).log()


def masked_mean(x: Tensor, mask=None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` (same shape, bool or 0/1) is true; 0 if none."""
    if mask is None:
        return x.mean()
    m = _const(mask, x)
    if m.shape != x.shape:
        raise ValueError(f"masked_mean: mask of shape {m.shape} does not match values of shape {x.shape}")
    return (x * m).sum() / max(float(backend.to_numpy(m.data).sum()), 1.0)


def _float(x) -> float:
    return float(host_array(x))


# ---- log-probabilities of given tokens ----------------------------------------------------------

def token_logprobs(logits: Tensor, targets, mask=None) -> Tensor:
    """log softmax(logits)[b, t, targets[b, t]] -> (B, T); 0 where targets is -1 or mask is false.

    Computed as -cross_entropy(reduction="none"): one fused op that keeps float32 and never
    stores a (B, T, V) log-softmax for the backward."""
    t = _array_on(targets, logits.device)
    if mask is not None:
        m = _array_on(mask, logits.device)
        if m.shape != t.shape:
            raise ValueError(f"token_logprobs: mask of shape {m.shape} does not match targets of shape {t.shape}")
        t = backend.xp_of(t).where(m.astype(bool), t, IGNORE_INDEX)
    return -F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX, reduction="none")


def sequence_logprobs(logits: Tensor, targets, mask=None) -> Tensor:
    """Summed log-probability of each sequence's scored targets -> (B,): log pi(completion | prompt)
    when the prompt's targets are -1 (or masked out), the quantity DPO compares."""
    return token_logprobs(logits, targets, mask).sum(axis=-1)


# ---- reward model: Bradley-Terry -------------------------------------------------------------------

def bradley_terry_loss(r_chosen: Tensor, r_rejected) -> Tensor:
    """Mean over pairs of -log sigmoid(r_chosen - r_rejected) = softplus(r_rejected - r_chosen)."""
    r_chosen = _as_tensor(r_chosen)
    r_rejected = r_rejected if isinstance(r_rejected, Tensor) else _const(r_rejected, r_chosen)
    return softplus(r_rejected - r_chosen).mean()


def pair_accuracy(r_chosen, r_rejected) -> float:
    """Fraction of pairs whose chosen reward is strictly higher (a tie counts as wrong)."""
    c, r = host_array(r_chosen), host_array(r_rejected)
    return float((c > r).mean()) if c.size else 0.0


# ---- DPO ---------------------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1) -> tuple[Tensor, dict]:
    """DPO's sigmoid loss, mean over the batch; every argument (B,) summed completion log-probs.

    The implicit reward of a completion is beta * (log pi - log ref); the loss is
    -log sigmoid(reward_chosen - reward_rejected). The reference log-probs are constants.
    Returns (loss, stats) with stats: rewards/chosen, rewards/rejected, rewards/margin (batch
    means) and rewards/accuracy (fraction with reward_chosen > reward_rejected)."""
    pc, pr = _as_tensor(policy_chosen_logps), _as_tensor(policy_rejected_logps)
    rc, rr = _const(ref_chosen_logps, pc), _const(ref_rejected_logps, pc)
    chosen = (pc - rc) * beta          # (B,) implicit rewards
    rejected = (pr - rr) * beta
    margin = chosen - rejected
    loss = softplus(-margin).mean()
    stats = {"rewards/chosen": _float(chosen.data.mean()), "rewards/rejected": _float(rejected.data.mean()),
             "rewards/margin": _float(margin.data.mean()), "rewards/accuracy": pair_accuracy(chosen, rejected)}
    return loss, stats


# ---- PPO: advantages (NumPy) --------------------------------------------------------------------

def _np(x) -> np.ndarray:
    a = host_array(x)
    if not np.issubdtype(a.dtype, np.floating) and a.dtype != bool:
        a = a.astype(np.float32)
    return a


def _mask_of(mask, shape, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, bool)
    m = _np(mask)
    if m.shape != shape:
        raise ValueError(f"{name}: mask of shape {m.shape} does not match values of shape {shape}")
    return m.astype(bool)


def gae(rewards, values, *, mask=None, dones=None, gamma: float = 1.0, lam: float = 0.95):
    """Generalized advantage estimation per sequence -> (advantages, returns), each (B, T).

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = sum_l (gamma lam)^l delta_{t+l}, computed
    backwards as A_t = delta_t + gamma lam A_{t+1}. Each row is one episode; a position where
    ``mask`` is false is not part of it (it gets 0), so the last valid position of a row bootstraps
    from V = 0 (the episode ends there), whatever padding follows. ``dones[b, t]`` true ends an
    episode after step t as well. returns = advantages + values (the value head's targets).
    NumPy in and out, in the inputs' float dtype."""
    r = _np(rewards)
    v = _np(values)
    if r.ndim != 2 or v.shape != r.shape:
        raise ValueError(f"gae: rewards {r.shape} and values {v.shape} must both be (B, T)")
    dtype = np.result_type(r.dtype, v.dtype, np.float32)
    m = _mask_of(mask, r.shape, "gae")
    # cont[:, t]: the episode goes on from t to t + 1 (t + 1 is valid and t is not a done)
    cont = np.zeros(r.shape, bool)
    cont[:, :-1] = m[:, 1:]
    if dones is not None:
        cont &= ~_mask_of(dones, r.shape, "gae")
    r, v = np.where(m, r, 0).astype(dtype), np.where(m, v, 0).astype(dtype)
    gamma, gl = dtype.type(gamma), dtype.type(gamma * lam)
    adv = np.zeros(r.shape, dtype)
    next_v = np.zeros(r.shape[0], dtype)
    next_a = np.zeros(r.shape[0], dtype)
    for t in reversed(range(r.shape[1])):
        c = cont[:, t]
        delta = r[:, t] + gamma * np.where(c, next_v, 0) - v[:, t]
        adv[:, t] = np.where(m[:, t], delta + gl * np.where(c, next_a, 0), 0)
        next_v, next_a = v[:, t], adv[:, t]
    return adv, np.where(m, adv + v, 0).astype(dtype)


def whiten(x, mask=None, shift_mean: bool = True, eps: float = 1e-8) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over the entries where ``mask`` is true, as TRL does (Bessel's
    unbiased variance; with one entry, variance 0). shift_mean=False adds the mean back (scale
    only). Masked-out entries become 0. NumPy in and out."""
    a = _np(x)
    dtype = np.result_type(a.dtype, np.float32)
    m = _mask_of(mask, a.shape, "whiten")
    n = int(m.sum())
    if n == 0:
        return np.zeros(a.shape, dtype)
    vals = a[m].astype(np.float64)
    mean = vals.mean()
    var = vals.var(ddof=1) if n > 1 else 0.0
    out = (a - mean) / math.sqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return np.where(m, out, 0).astype(dtype)


# ---- PPO: losses (Tensors) ------------------------------------------------------------------------

def ppo_policy_loss(logprobs: Tensor, old_logprobs, advantages, mask=None, clip: float = 0.2) -> tuple[Tensor, dict]:
    """PPO's clipped surrogate, the masked mean of max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi / pi_old.

    ``logprobs`` (B, T) Tensor of the current policy; old_logprobs, advantages and mask constants.
    Where the ratio has moved past the clip on the side that raises the objective the clipped term
    wins and the gradient is 0. Stats: policy/clipfrac (fraction of tokens where the clipped term is
    taken), policy/approxkl (masked mean of k3 = (r - 1) - log r), policy/ratio (masked mean of r)."""
    log_ratio = logprobs - _const(old_logprobs, logprobs)
    ratio = log_ratio.exp()
    adv = _const(advantages, logprobs)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clip(1 - clip, 1 + clip)
    loss = masked_mean(unclipped.maximum(clipped), mask)   # at a tie the two branches have equal gradients
    m = _mask_of(mask, logprobs.shape, "ppo_policy_loss")
    n = max(int(m.sum()), 1)
    lr, r = backend.to_numpy(log_ratio.data).astype(np.float64), backend.to_numpy(ratio.data).astype(np.float64)
    took_clip = backend.to_numpy(clipped.data) > backend.to_numpy(unclipped.data)
    stats = {"policy/clipfrac": float((took_clip & m).sum() / n),
             "policy/approxkl": float(np.where(m, np.expm1(lr) - lr, 0).sum() / n),
             "policy/ratio": float(np.where(m, r, 0).sum() / n)}
    return loss, stats


def ppo_value_loss(values: Tensor, old_values, returns, mask=None, clip: float = 0.2) -> tuple[Tensor, dict]:
    """Clipped value loss: 0.5 * masked mean of max((v - R)^2, (v_clip - R)^2), where
    v_clip = old + clip(v - old, -c, c) keeps the new value near the one seen in the rollout.
    Stats: value/clipfrac (fraction of tokens where the clipped term is the larger)."""
    old = _const(old_values, values)
    ret = _const(returns, values)
    v_clip = old + (values - old).clip(-clip, clip)
    err, err_clip = (values - ret) ** 2, (v_clip - ret) ** 2
    loss = masked_mean(err.maximum(err_clip), mask) * 0.5
    m = _mask_of(mask, values.shape, "ppo_value_loss")
    v, o = backend.to_numpy(values.data), backend.to_numpy(old.data)
    # outside the clip range and the clipped error larger (inside it v_clip == v up to rounding)
    took_clip = (np.abs(v - o) > clip) & (backend.to_numpy(err_clip.data) > backend.to_numpy(err.data))
    return loss, {"value/clipfrac": float((took_clip & m).sum() / max(int(m.sum()), 1))}


# ---- KL: per-token estimators and the coefficient controllers (NumPy) -----------------------------

def kl_penalty(logprobs, ref_logprobs, kind: str = "k1") -> np.ndarray:
    """Per-token estimates of KL(pi || ref) from log-probs of tokens sampled from pi (Schulman,
    "Approximating KL divergence", 2020), with log r = log ref - log pi:
    k1 = -log r (unbiased, can be negative); k2 = (log r)^2 / 2 (biased, low variance);
    k3 = (r - 1) - log r (unbiased and >= 0). Same shape and float dtype as the inputs."""
    lp, lq = _np(logprobs), _np(ref_logprobs)
    if lp.shape != lq.shape:
        raise ValueError(f"kl_penalty: logprobs {lp.shape} and ref_logprobs {lq.shape} differ in shape")
    dtype = np.result_type(lp.dtype, lq.dtype, np.float32)
    log_r = lq.astype(np.float64) - lp.astype(np.float64)
    if kind == "k1":
        out = -log_r
    elif kind == "k2":
        out = 0.5 * log_r ** 2
    elif kind == "k3":
        out = np.expm1(log_r) - log_r   # expm1 keeps precision for r near 1, where k3 ~ (log r)^2 / 2
    else:
        raise ValueError(f"kl_penalty: kind must be 'k1', 'k2' or 'k3', got {kind!r}")
    return out.astype(dtype)


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. 2019 (and TRL): steer the observed KL toward ``target``.

    update(current_kl, n_steps): e = clip(current_kl / target - 1, -0.2, 0.2);
    value *= 1 + e * n_steps / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target and horizon must be positive, got {target}, {horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """A constant KL coefficient (update does nothing)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


# ---- entropy ------------------------------------------------------------------------------------

def entropy_from_logits(logits, mask=None) -> Tensor:
    """Entropy of softmax(logits) at each position -> (B, T) Tensor, 0 where mask is false:
    H = -sum_v p_v log p_v (differentiable, for an entropy bonus; masked_mean gives its mean).
    Logits must be finite (a -inf logit would give 0 * -inf)."""
    logits = _as_tensor(logits)
    logp = F.log_softmax(logits, axis=-1)           # (B, T, V)
    h = -(logp.exp() * logp).sum(axis=-1)           # (B, T)
    return h if mask is None else h * _const(_mask_of(mask, h.shape, "entropy_from_logits"), h)
