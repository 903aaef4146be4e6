"""Cutting a model in two: a head up to a named module, a tail for the rest.

The cut works on the model's graph (``torch.fx``), not on a per-architecture table, so any
torchvision classifier that traces can be cut:

- **Where.** A split point is a module name a user would write: a child of the model (``conv1``,
  ``layer3``, ``avgpool``) or a child of a plain ``nn.Sequential`` (or ``nn.ModuleList``) one
  or two levels down (``layer3.1``, ``features.4``, ``encoder.layers.encoder_layer_5``). A name is offered only
  where the traced graph falls apart into *head → one value → tail*: when the module's output is
  the only value the rest of the graph still needs. A cut across a skip connection, or one after
  which the tail still reads the input image (ViT's ``conv_proj``, whose tail reshapes with the
  input's batch size), is not offered, nor is the last module (the tail would do nothing). Two
  names that end at the same place (``layer1.1`` and ``layer1``) are listed once, by the outer
  name; :func:`cut` accepts either.
- **What.** :func:`cut` returns two ``fx.GraphModule`` halves built from the traced graph. They
  hold the model's own submodules (no copies), so head and tail share the model's parameters
  by construction, whatever weights were loaded.

Python-level branches on the model's state (``if self.training``) are fixed when the model is
traced: call :func:`cut` on the model in the mode its halves will run in (``eval()`` for
inference). Nothing here imports Ray or touches files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from .errors import UserError, did_you_mean
from .spec import parse_split

__all__ = ["cut", "parse_split", "point_shapes", "split_points"]

_FIELD = "model.split"


# -- tracing ---------------------------------------------------------------------------------


class _OutputTracer(fx.Tracer):
    """An ``fx.Tracer`` that remembers the graph node each module call returned (the last call
    of a module that runs twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[str, fx.Node] = {}

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs[self.path_of_module(m)] = out.node
        return out


@dataclass
class _Traced:
    """A traced model: its graph's nodes in order, and the cut node of every valid split point."""

    nodes: list[fx.Node]
    cuts: dict[str, fx.Node]  # every valid name, aliases included
    points: list[str]  # one name per distinct cut, in graph order


def _candidate_names(model: nn.Module) -> list[str]:
    """Module names a user would write: the model's children, and the children of every plain
    ``nn.Sequential`` or ``nn.ModuleList`` among its children and grandchildren (``layer3.1``,
    ``encoder.layers.encoder_layer_0``, MaxViT's ``blocks.0``)."""
    names = [name for name, _ in model.named_children()]
    for name, module in model.named_modules():
        depth = name.count(".") + 1 if name else 0
        if type(module) in (nn.Sequential, nn.ModuleList) and depth in (1, 2):
            names += [f"{name}.{child}" for child, _ in module.named_children()]
    return names


def _is_single_value_cut(nodes: list[fx.Node], index: dict[fx.Node, int], node: fx.Node) -> bool:
    """True when ``node`` is the only value computed up to it that later nodes read, and the
    model does more than return it."""
    end = index[node]
    crossing = {n for n in nodes[: end + 1] if any(index[user] > end for user in n.users)}
    return crossing == {node} and nodes[-1].args[0] is not node


def _trace(model: nn.Module, name: str, field: str) -> _Traced:
    tracer = _OutputTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # data-dependent control flow and the like: say so in one line
        raise UserError(field, name, f"cannot be traced with torch.fx ({type(exc).__name__}: {exc})",
                        "choose a model whose forward has no data-dependent Python control flow") from None
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    cuts = {p: tracer.outputs[p] for p in _candidate_names(model)
            if p in tracer.outputs and _is_single_value_cut(nodes, index, tracer.outputs[p])}
    by_node: dict[fx.Node, str] = {}
    for point in sorted(cuts, key=lambda p: p.count(".")):  # the outer name of each cut wins
        by_node.setdefault(cuts[point], point)
    points = [by_node[n] for n in sorted(by_node, key=index.__getitem__)]
    return _Traced(nodes, cuts, points)


def _resolve(model: nn.Module | str) -> tuple[nn.Module, str]:
    """A model and the name to show for it; a name builds the torchvision model (random weights)."""
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    import torchvision

    from .model import check_model

    check_model(model, None)
    return torchvision.models.get_model(model, weights=None).eval(), model


# -- public API ------------------------------------------------------------------------------


def split_points(model: nn.Module | str, field: str = _FIELD) -> list[str]:
    """The names ``model`` (a module, or a torchvision model name) can be cut at, in the order
    they run; each names one distinct cut."""
    module, name = _resolve(model)
    return _trace(module, name, field).points


def cut(model: nn.Module, point: str, *, name: str | None = None,
        field: str = _FIELD) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut ``model`` after the module ``point``: ``head(x)`` runs everything up to and including
    it and returns its activation; ``tail(activation)`` runs the rest and returns the logits.

    Both halves hold ``model``'s own submodules and parameters. ``name`` is the model's name in
    error messages (default: its class name). An unknown or uncuttable ``point`` is a
    :class:`UserError` that lists the valid points.
    """
    name = name or type(model).__name__
    traced = _trace(model, name, field)
    node = traced.cuts.get(point)
    if node is None:
        raise UserError(field, point, f"is not a split point of {name}" + did_you_mean(point, traced.points),
                        "use one of: " + ", ".join(traced.points))
    end = traced.nodes.index(node)
    head, env = fx.Graph(), {}
    for n in traced.nodes[: end + 1]:
        env[n] = head.node_copy(n, env.__getitem__)
    head.output(env[node])
    tail = fx.Graph()
    env = {node: tail.placeholder("activation")}
    for n in traced.nodes[end + 1:]:
        env[n] = tail.node_copy(n, env.__getitem__)
    return fx.GraphModule(model, head, class_name="Head"), fx.GraphModule(model, tail, class_name="Tail")


def point_shapes(model: nn.Module | str, size: int = 224,
                 field: str = "size") -> list[tuple[str, tuple[int, ...]]]:
    """Each split point with the shape of its activation for one ``size``×``size`` RGB image
    (one forward pass, no gradients). A size the model cannot run on (ViT wants its
    ``image_size``) is a :class:`UserError` on ``field``."""
    module, name = _resolve(model)
    points = _trace(module, name, _FIELD).points
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [module.get_submodule(p).register_forward_hook(
        lambda _m, _args, out, p=p: shapes.__setitem__(p, tuple(out.shape))) for p in points]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise UserError(field, size, f"{name} does not run on a {size}x{size} input ({exc})",
                        "use the input size the model was built for, e.g. 224") from None
    finally:
        for h in hooks:
            h.remove()
    return [(p, shapes[p]) for p in points]
