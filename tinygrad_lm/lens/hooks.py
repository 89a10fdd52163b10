"""Hook points by TransformerLens name, and running a model while looking at or replacing activations.

The hook points themselves live in the layers (nn.HookPoint); this module names them, attaches
functions to them for the length of one call, and collects a cache of what was asked for."""
from __future__ import annotations

import contextlib
import difflib

import numpy as np

from .. import backend
from ..models import GPT
from ..nn import MLP, CausalSelfAttention
from ..nn.hooks import HookPoint

# Per block, in the order the forward reaches them.
BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
# Only these need the T x T matrix, so only they take attention off the fused kernel.
MATRIX_HOOKS = ("attn.hook_scores", "attn.hook_pattern")


def as_gpt(model) -> GPT:
    """The GPT that does the work: model itself, or the base of a PeftModel (its ``.model``)."""
    m = model
    while not isinstance(m, GPT):
        inner = getattr(m, "model", None)
        if inner is None or inner is m:
            raise TypeError(f"tinygrad_lm.lens needs a tinygrad_lm GPT (or a PeftModel around one), "
                            f"got {type(model).__name__}")
        m = inner
    return m


def _inside(module, cls):
    """The cls layer in a block's slot: the layer itself, or the one a PEFT adapter wraps."""
    return next(m for m in module.modules() if isinstance(m, cls))


def hook_points(model) -> dict[str, HookPoint]:
    """Every hook point of the model, {TransformerLens name: HookPoint}, in the order forward reaches
    them. hook_pos_embed is absent with RoPE (positions turn q and k instead of adding a vector)."""
    gpt = as_gpt(model)
    points = {"hook_embed": gpt.hook_embed}
    if gpt.config.pos != "rope":
        points["hook_pos_embed"] = gpt.hook_pos_embed
    for layer, block in enumerate(gpt.transformer.h):
        attn, mlp = _inside(block.attn, CausalSelfAttention), _inside(block.mlp, MLP)
        owners = {"ln1": block.ln_1, "ln2": block.ln_2, "attn": attn, "mlp": mlp}
        for name in BLOCK_HOOKS:
            owner, _, attr = name.rpartition(".")
            points[f"blocks.{layer}.{name}"] = getattr(owners[owner] if owner else block, attr)
    points["ln_final.hook_normalized"] = gpt.transformer.ln_f.hook_normalized
    return points


def unknown_name_error(name, points: dict, model) -> ValueError:
    """A ValueError naming the bad hook name, the closest real ones and how to list them all."""
    gpt = as_gpt(model)
    close = difflib.get_close_matches(str(name), list(points), n=5, cutoff=0.5)
    hint = ""
    if str(name) == "hook_pos_embed" and gpt.config.pos == "rope":
        hint = " This model uses RoPE: no position vector is added; attn.hook_q and attn.hook_k are after the rotation."
    return ValueError(f"unknown hook name {name!r} for this model ({gpt.config.n_layer} layers: blocks.0 .. "
                      f"blocks.{gpt.config.n_layer - 1}); close names: {close or 'none'}.{hint} "
                      f"tinygrad_lm.lens.hook_points(model) lists all {len(points)}.")


def resolve_names(model, names, points: dict | None = None) -> list[str]:
    """names: None (every hook point), one name, a list of names, or a callable name -> bool;
    -> the hook names it means, in forward order. An unknown name raises ValueError."""
    points = hook_points(model) if points is None else points
    if names is None:
        return list(points)
    if callable(names):
        return [n for n in points if names(n)]
    wanted = {names} if isinstance(names, str) else set(names)
    for n in wanted:
        if n not in points:
            raise unknown_name_error(n, points, model)
    return [n for n in points if n in wanted]


@contextlib.contextmanager
def hooked(model, hooks):
    """Attach each fn(activation, name) of hooks = [(name, fn), ...] for the length of the block;
    a name may also be a callable name -> bool choosing several points. See nn.HookPoint for what
    fn gets and may return. The functions are taken off again even if the block raises."""
    points = hook_points(model)
    attached = []
    try:
        for entry in hooks:
            if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
                raise TypeError(f"hooks must be (name, fn) pairs with fn(activation, name), got {entry!r}")
            which, fn = entry
            for name in resolve_names(model, which if callable(which) else [which], points):
                pair = (name, fn)
                points[name].fns.append(pair)
                attached.append((points[name], pair))
        yield
    finally:
        for point, pair in reversed(attached):
            # by identity: the same fn may sit twice at one point
            del point.fns[next(i for i, p in enumerate(point.fns) if p is pair)]


def run_with_hooks(model, idx, hooks=(), **forward_kwargs):
    """model(idx, all_logits=True, **forward_kwargs) with hooks = [(name, fn), ...] attached for the
    call: fn(activation, name) may return a replacement array (ablation, activation patching).
    Returns what forward returns: (logits (B, T, V), loss or None). Runs in the caller's grad mode
    and the model's train/eval mode."""
    with hooked(model, hooks):
        return model(idx, all_logits=True, **forward_kwargs)


class ActivationCache(dict):
    """{hook name: NumPy array} from run_with_cache; a missing name says what was cached."""

    def __missing__(self, name):
        close = difflib.get_close_matches(str(name), list(self), n=5, cutoff=0.5)
        raise KeyError(f"{name!r} is not in this cache ({len(self)} activations; close names: {close or 'none'}); "
                       f"ask run_with_cache(..., names=[...]) for it")

    def stack(self, hook: str) -> np.ndarray:
        """One per-block hook of every cached layer stacked: stack("hook_resid_post") -> (n_layer, B, T, C)."""
        layers = sorted(int(n.split(".")[1]) for n in self if n.startswith("blocks.") and n.split(".", 2)[2] == hook)
        if not layers:
            raise KeyError(f"no blocks.*.{hook} in this cache")
        return np.stack([self[f"blocks.{layer}.{hook}"] for layer in layers])


class _Stop(Exception):
    """Raised at the stop_at_layer point to end the forward early."""


def _stop(activation, name):
    raise _Stop(name)


def run_with_cache(model, idx, names=None, stop_at_layer: int | None = None, **forward_kwargs):
    """Run model(idx, all_logits=True, **forward_kwargs) and keep the activations named by names
    (None: all; a list; or a callable name -> bool) -> (logits (B, T, V) Tensor, ActivationCache
    {name: NumPy array}). Only what is asked is copied out, and the fused attention kernel stays in
    use unless attn.hook_scores or attn.hook_pattern is among the names.

    stop_at_layer=k runs embeddings and blocks 0 .. k-1 only (negative k counts from the end) and
    returns (None, cache): the forward ends where blocks.k.hook_resid_pre would run (for k = n_layer,
    before the final norm). Names past that point raise ValueError."""
    points = hook_points(model)
    wanted = resolve_names(model, names, points)
    hooks = []
    if stop_at_layer is not None:
        n_layer = as_gpt(model).config.n_layer
        if not isinstance(stop_at_layer, (int, np.integer)) or not -n_layer <= stop_at_layer <= n_layer:
            raise ValueError(f"stop_at_layer must be an integer in [-{n_layer}, {n_layer}], got {stop_at_layer!r}")
        stop = stop_at_layer % n_layer if stop_at_layer < 0 else stop_at_layer
        stop_name = f"blocks.{stop}.hook_resid_pre" if stop < n_layer else "ln_final.hook_normalized"
        order = list(points)
        late = [n for n in wanted if order.index(n) >= order.index(stop_name)]
        if late and names is not None and not callable(names):
            raise ValueError(f"stop_at_layer={stop_at_layer} ends the forward before {late[:3]}"
                             + (f" and {len(late) - 3} more" if len(late) > 3 else ""))
        wanted = [n for n in wanted if n not in late]
        hooks.append((stop_name, _stop))
    cache = ActivationCache()

    def keep(activation, name):
        # np.array copies: the cache must not share memory with arrays the graph (or a hook) still uses
        cache[name] = np.array(backend.to_numpy(activation))

    hooks += [(name, keep) for name in wanted]
    with hooked(model, hooks):
        try:
            logits, _ = model(idx, all_logits=True, **forward_kwargs)
        except _Stop:
            logits = None
    return logits, cache
