"""The autograd graph as a picture: one node per op (Function) and per leaf tensor, in Graphviz's DOT.

    from tinygrad_lm.lens import draw_graph
    _, loss = model(x, y)
    dot = draw_graph(loss, params=dict(model.named_parameters()), path="graph.svg", grads=True)

An op's node shows its name, output shape and dtype, which kernel a hot op ran (fast or reference)
and, with ``grads=True``, the norm of the gradient that reached its output; a leaf shows its
parameter name (when ``params`` names it), shape, dtype and the norm of its ``.grad``. Edges run
from inputs to the op that used them, so the loss is at the bottom. Parameters whose names carry a
layer number (``transformer.h.3.attn...``) put their ops in a box per layer; ``collapse=True`` draws
the first of each run of identical layers and one node for each repeat, and ``max_nodes`` keeps the
nodes nearest the output. Writing .svg/.png/.pdf needs Graphviz's ``dot`` program; without it the
DOT text goes to a .dot file beside the asked path, with a warning that says how to draw it."""
from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from collections import Counter
from pathlib import Path

from .. import backend
from ..tensor import _FREED, Function, Tensor, _toposort

__all__ = ["draw_graph"]

RENDERED = ("svg", "png", "pdf")
_LAYER = re.compile(r"^(.*?\.\d+)\.")   # "transformer.h.3.attn.c_attn.weight" -> "transformer.h.3"


def draw_graph(tensor: Tensor, params: dict | None = None, path=None, *, grads: bool = False,
               constants: bool = True, collapse: bool = False, max_nodes: int | None = 500) -> str:
    """The DOT text of the graph that made ``tensor``; also written to ``path`` when given
    (.dot/.gv as text, .svg/.png/.pdf drawn by Graphviz).

    params: {name: tensor}, e.g. ``dict(model.named_parameters())``, to name leaves and group ops by layer.
    grads: run ``tensor.backward()`` (gradients accumulate into ``.grad`` as usual; the graph is freed
        as usual) and show each op's output gradient norm. Draw before any backward: a backward frees
        the graph (unless it was called with retain_graph=True, which keeps the structure and the
        leaves' ``.grad`` but not the ops' gradients).
    constants: draw inputs that need no gradient (token ids, masks, scalars) as grey boxes.
    collapse: one node for each layer whose ops repeat an earlier layer's (needs ``params``).
    max_nodes: draw at most this many nodes, those nearest the output (None: all)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor, got {type(tensor).__name__}")
    if collapse and not params:
        raise ValueError("draw_graph: collapse=True needs params (e.g. dict(model.named_parameters())): "
                         "the layer numbers in their names tell which ops repeat")
    if max_nodes is not None and (not isinstance(max_nodes, int) or max_nodes < 1):
        raise ValueError(f"draw_graph: max_nodes must be a positive integer or None, got {max_nodes!r}")
    root = tensor._ctx if tensor._ctx is not None else tensor
    if isinstance(root, Function) and root.parents is _FREED:
        raise RuntimeError("draw_graph: the graph was freed by backward(); draw it before the backward "
                           "(grads=True runs the backward and shows gradient norms), or call backward(retain_graph=True)")
    graph = _Graph(root, {id(t): name for name, t in (params or {}).items()}, constants)
    if grads:
        graph.grad_norms = _run_backward(tensor, graph.functions())
    dot = graph.dot(collapse, max_nodes)
    if path is not None:
        _write(dot, Path(path))
    return dot


class _Graph:
    """The nodes (ops, leaves, constants) in forward order, the edges between them, and the layer
    each belongs to. Everything a label needs is read now: a later backward clears the ops."""

    def __init__(self, root, names: dict, constants: bool):
        self.order, self.edges, self.labels, self.kinds, self.layer, self.nodes = [], [], {}, {}, {}, {}
        self.grad_norms: dict = {}
        self.root, self.names = root, names
        topo = _toposort(root)
        if any(isinstance(n, Function) and n.parents is _FREED for n in topo):
            raise RuntimeError("draw_graph: part of the graph was freed by an earlier backward(); "
                               "draw before the backward or call backward(retain_graph=True)")
        for node in topo:
            if isinstance(node, Tensor):
                continue   # a leaf is added just before the first op that reads it
            for p in node.parents:
                if id(p) not in self.labels and (p.requires_grad or constants):
                    self._add(p)
                if id(p) in self.labels:
                    self.edges.append((id(p), id(node)))
            self._add(node)
        if isinstance(root, Tensor):
            self._add(root)
        self._assign_layers()

    def functions(self) -> list:
        return [n for n in self.order if isinstance(n, Function)]

    def _add(self, node) -> None:
        self.order.append(node)
        self.nodes[id(node)] = node
        if isinstance(node, Function):
            self.kinds[id(node)] = "op"
            impl = node.__dict__.get("impl")
            kernel = "" if impl is None else f"\nkernel: {backend.implementation_kind(impl)}"
            self.labels[id(node)] = f"{type(node).__name__}\n{_shape(node.out_shape)} {node.out_dtype}{kernel}"
        elif node.requires_grad:
            self.kinds[id(node)] = "leaf"
            self.labels[id(node)] = f"{self.names.get(id(node), 'leaf')}\n{_shape(node.shape)} {node.dtype}"
        else:
            self.kinds[id(node)] = "constant"
            self.labels[id(node)] = f"constant\n{_shape(node.shape)} {node.dtype}"

    def _assign_layers(self) -> None:
        """A parameter's layer comes from its name; an op takes the layer of the parameters it reads,
        else the latest layer among its inputs (a residual add after layer 3's MLP is layer 3's);
        a constant goes with its first reader. Layers rank by first appearance in forward order."""
        rank = {None: -1}
        parents = {}
        for a, b in self.edges:
            parents.setdefault(b, []).append(a)
        for node in self.order:
            key = id(node)
            if self.kinds[key] == "leaf":
                m = _LAYER.match(self.names.get(key, ""))
                self.layer[key] = m.group(1) if m else None
            elif self.kinds[key] == "op":
                ins = parents.get(key, [])
                named = [self.layer[p] for p in ins if p in self.names]
                pool = named or [self.layer[p] for p in ins if self.kinds[p] == "op"]
                self.layer[key] = max(pool, key=lambda g: rank[g], default=None)
            rank.setdefault(self.layer.get(key), len(rank))
        for a, b in self.edges:   # constants: with their first reader
            if self.kinds[a] == "constant" and a not in self.layer:
                self.layer[a] = self.layer[b]

    def dot(self, collapse: bool, max_nodes: int | None) -> str:
        rep = {id(n): id(n) for n in self.order}            # node -> the node drawn for it
        extra_labels, layer_nodes = {}, {}
        members: dict = {}
        for n in self.order:
            members.setdefault(self.layer.get(id(n)), []).append(id(n))
        if collapse:
            first_with: dict = {}
            for layer, keys in members.items():
                if layer is None:
                    continue
                ops = [self.labels[k].split("\n", 1)[0] for k in keys if self.kinds[k] == "op"]
                signature = tuple(sorted(Counter(ops).items()))
                if signature not in first_with:
                    first_with[signature] = layer
                    continue
                node = f"layer:{layer}"
                extra_labels[node] = (f"{layer}\nsame ops as {first_with[signature]}\n({len(ops)} ops, "
                                      f"{sum(self.kinds[k] == 'leaf' for k in keys)} parameters)")
                layer_nodes[node] = layer
                for k in keys:
                    rep[k] = node
        drawn = list(dict.fromkeys(rep[id(n)] for n in self.order))   # forward order, each once
        edges, seen = [], set()
        for a, b in self.edges:   # an op may read one input twice (x * x): two edges; a collapsed layer: one
            e = (rep[a], rep[b])
            if e[0] == e[1] or (e in seen and (e[0] in layer_nodes or e[1] in layer_nodes)):
                continue
            seen.add(e)
            edges.append(e)
        if max_nodes is not None and len(drawn) > max_nodes:
            hidden = len(drawn) - max_nodes
            kept = set(drawn[hidden:])
            position = {key: i for i, key in enumerate(drawn)}
            cut = sorted({b for a, b in edges if a not in kept and b in kept}, key=position.get)
            drawn = ["hidden"] + drawn[hidden:]
            extra_labels["hidden"] = f"... {hidden} earlier nodes not drawn\n(max_nodes={max_nodes}; try collapse=True)"
            edges = [e for e in edges if e[0] in kept and e[1] in kept] + [("hidden", b) for b in cut]
        ids = {key: f"n{i}" for i, key in enumerate(drawn)}
        lines = ["digraph autograd {",
                 '  graph [rankdir=TB, fontname="Helvetica", fontsize=10];',
                 '  node [fontname="Helvetica", fontsize=9];',
                 '  edge [arrowsize=0.6];']
        clusters: dict = {}
        for key in drawn:
            layer = None if key in extra_labels else self.layer.get(key)
            line = f"  {ids[key]} [{self._attrs(key, extra_labels)}];"
            if layer is not None:
                clusters.setdefault(layer, []).append(line)
            else:
                lines.append(line)
        for i, (layer, body) in enumerate(clusters.items()):
            lines += [f"  subgraph cluster_{i} {{", f'    label="{_escape(layer)}"; style=dashed; color=grey;']
            lines += ["  " + b for b in body] + ["  }"]
        lines += [f"  {ids[a]} -> {ids[b]};" for a, b in edges]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _attrs(self, key, extra_labels: dict) -> str:
        if key in extra_labels:
            return f'label="{_escape(extra_labels[key])}", shape=box3d, style=filled, fillcolor="#eeeeee"'
        node = self.nodes[key]
        label = self.labels[key]
        kind = self.kinds[key]
        if kind == "op" and key in self.grad_norms:
            label += f"\n|grad| {self.grad_norms[key]:.3g}"
        if kind == "leaf" and node.grad is not None:
            label += f"\n|grad| {_norm(node.grad):.3g}"
        style = {"op": 'shape=box, style="rounded,filled", fillcolor="#fff2cc"',
                 "leaf": 'shape=ellipse, style=filled, fillcolor="#cfe2f3"',
                 "constant": 'shape=box, style="dashed", color=grey, fontcolor=grey30'}[kind]
        if node is self.root:
            style += ", penwidth=2"
        return f'label="{_escape(label)}", {style}'


def _run_backward(tensor: Tensor, functions: list) -> dict:
    """tensor.backward(), noting the norm of the gradient each op receives for its output. The
    note-taker sits on each node of this graph only (an instance attribute: other graphs, and the
    engine, are untouched), and backward() drops it with the node's saved arrays."""
    norms = {}

    def noting(node, method):
        def wrapped(g, *rest):
            norms[id(node)] = _norm(g)
            return method(g, *rest)
        return wrapped

    for node in functions:
        node.backward = noting(node, node.backward)
        if hasattr(node, "add_grad_into"):
            node.add_grad_into = noting(node, node.add_grad_into)
    try:
        tensor.backward()
    finally:
        for node in functions:
            node.__dict__.pop("backward", None)
            node.__dict__.pop("add_grad_into", None)
    return norms


def _write(dot: str, path: Path) -> None:
    fmt = path.suffix.lower().lstrip(".")
    if fmt in ("dot", "gv"):
        path.write_text(dot)
        return
    if fmt not in RENDERED:
        raise ValueError(f"draw_graph: cannot write {path}: use a .dot, .gv, {', '.join('.' + f for f in RENDERED)} file")
    program = shutil.which("dot")
    if program is None:
        text = path.with_suffix(".dot")
        text.write_text(dot)
        warnings.warn(f"Graphviz's `dot` program was not found, so {path} was not drawn; the graph is in {text} "
                      f"(install Graphviz, e.g. `apt install graphviz`, then: dot -T{fmt} {text} -o {path})",
                      RuntimeWarning, stacklevel=3)
        return
    res = subprocess.run([program, f"-T{fmt}", "-o", str(path)], input=dot, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"draw_graph: Graphviz's dot failed to draw {path}: {res.stderr.strip()}")


def _norm(a) -> float:
    return float(backend.xp_of(a).linalg.norm(a.ravel().astype("float64")))


def _shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
