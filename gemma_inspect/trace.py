"""Tracing: forward hooks on a runtime's real modules, for `verify`.

Every runtime's modules are `torch.nn.Module`s (transformers' layers, the reference runtime's, and keras
layers on keras' torch backend), so one mechanism serves all three:

- `capture_output` / `capture_input` keep a copy of what a module returned or received;
- `replace_output` swaps a module's output for a probe (known inputs for the next module);
- `on_softmax` sees every softmax inside each decoder block (attention scores in, probabilities out), through
  a `TorchFunctionMode` that is active only while a block runs;
- `record_block` records one decoder block as a call tree: which of its modules ran in which order, which
  tensor fed each of them (the block input `x`, another module's output, or an expression of the block's
  own arithmetic such as `gelu(gating_ffw) * gating_ffw_2`), and where the residual additions are.

Tensors are followed by identity (the object a module returned is the object the next one receives), with
equality of values as the fallback when a runtime copies or casts in between.
All hooks are removed when the `Tracer` context exits. torch is imported only by the code that uses it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

# Ops worth a leaf in the recorded graph wherever they happen.
SHOWN_OPS = {"softmax": "softmax", "gelu": "gelu", "silu": "silu", "tanh": "tanh", "relu": "relu"}
# Ops that only change dtype/contiguity: the result keeps its input's label.
PASSTHROUGH_OPS = {"to", "type", "float", "double", "half", "bfloat16", "contiguous", "clone", "as_tensor",
                   "detach", "cast"}
ARITHMETIC = {"add": "+", "__add__": "+", "__radd__": "+", "add_": "+", "__iadd__": "+",
              "mul": "*", "__mul__": "*", "__rmul__": "*", "multiply": "*",
              "sub": "-", "__sub__": "-", "div": "/", "__truediv__": "/"}


def first_tensor(args: Any, kwargs: dict[str, Any] | None = None) -> Any:
    """The hidden-state argument of a module call: the first tensor positional argument, else a
    `hidden_states`/`x`/`inputs` keyword, else the first tensor keyword."""
    import torch

    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    kwargs = kwargs or {}
    for key in ("hidden_states", "x", "inputs"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def main_output(output: Any) -> Any:
    """A module's main output: the tensor itself, or the first tensor of a tuple (HF attention returns
    (output, weights))."""
    if isinstance(output, (tuple, list)):
        return next((o for o in output if hasattr(o, "shape")), None)
    return output


def _with_main_output(output: Any, new: Any) -> Any:
    if isinstance(output, (tuple, list)):
        items = list(output)
        i = next(i for i, o in enumerate(items) if hasattr(o, "shape"))
        items[i] = new
        return type(output)(items) if isinstance(output, tuple) else items
    return new


def is_norm(module: Any) -> bool:
    return "norm" in type(module).__name__.lower()


def _op_mode(tracer: "Tracer") -> Any:
    """A TorchFunctionMode that shows the tracer every torch call made while a decoder block runs
    (built here so that torch is imported only when tracing)."""
    from torch.overrides import TorchFunctionMode

    class BlockOps(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)  # the mode is off inside its own handler: no recursion
            if not tracer.busy:  # ops of our own hooks are not the model's
                with tracer.quiet():
                    tracer._on_op(func, args, kwargs, out)
            return out

    return BlockOps()


class BlockRecord:
    """The recorded call tree and data flow of one decoder block (filled while the forward pass runs)."""

    def __init__(self, name: str, block: Any, roles: dict[int, str]):
        self.name = name
        self.cls = type(block).__name__
        self.roles = roles  # id(module) -> role (attention, mlp, gate, up, down, ...)
        self.nodes: list[dict[str, Any]] = []  # top-level: the block's own modules and ops, in call order
        self.input_label = "x"
        self.output_label: str | None = None
        self.shape: list[int] | None = None
        self.calls = 0
        self._stack: list[dict[str, Any]] = []
        self._labels: dict[int, str] = {}
        self._known: list[tuple[str, Any]] = []  # (label, tensor): keeps ids alive, and for value matching
        self._streams: set[str] = set()
        self._residuals = 0

    # ------------------------------------------------------------------ labels
    def label(self, t: Any, name: str) -> None:
        self._labels[id(t)] = name
        self._known.append((name, t))

    def label_of(self, t: Any) -> str | None:
        import torch

        if t is None or not isinstance(t, torch.Tensor):
            return None
        hit = self._labels.get(id(t))
        if hit is not None:
            return hit
        for name, k in reversed(self._known):  # a copy or a cast of a known tensor
            if k.shape == t.shape and k.device == t.device and torch.equal(k.to(t.dtype), t):
                return name
        return None

    # ------------------------------------------------------------------ events
    def enter_block(self, x: Any) -> None:
        self.calls += 1
        if self.calls > 1:
            return
        self.label(x, "x")
        self._streams.add("x")
        self.shape = list(x.shape)

    def exit_block(self, out: Any) -> None:
        if self.calls == 1:
            self.output_label = self.label_of(main_output(out))

    def enter_module(self, rel: str, module: Any, args: Any, kwargs: Any) -> None:
        if self.calls != 1:  # only the first forward pass is recorded
            return
        node: dict[str, Any] = {"kind": "module", "name": rel, "class": type(module).__name__,
                                "role": self.roles.get(id(module)) or ("norm" if is_norm(module) else None),
                                "children": []}
        if not self._stack:  # a part of the block itself: follow its input
            node["input"] = self.label_of(first_tensor(args, kwargs)) or "?"
        self._stack.append(node)

    def exit_module(self, out: Any) -> None:
        if self.calls != 1:
            return
        node = self._stack.pop()
        t = main_output(out)
        node["shape"] = list(t.shape) if t is not None and hasattr(t, "shape") else None
        if not self._stack:
            node["output"] = node["name"]
            if t is not None:
                self.label(t, node["name"])
            self.nodes.append(node)
        else:
            self._stack[-1]["children"].append(node)

    def op(self, name: str, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        import torch

        shown = SHOWN_OPS.get(name)
        if self._stack:  # inside one of the block's modules: only the ops worth showing, as leaves
            if shown and isinstance(out, torch.Tensor):
                leaf = {"kind": "op", "name": _op_title(name, kwargs), "shape": list(out.shape)}
                siblings = self._stack[-1]["children"]
                if not (siblings and siblings[-1].get("kind") == "op" and siblings[-1]["name"] == leaf["name"]):
                    siblings.append(leaf)
            return
        # The block's own arithmetic (residual additions, keras-hub's inline GELU * up).
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(out is a for a in tensors):
            return  # in-place or a no-op conversion
        labels = [self.label_of(a) for a in tensors]
        if not any(labels):
            return
        if name in PASSTHROUGH_OPS or name.startswith("convert"):
            self.label(out, next(lab for lab in labels if lab))
            return
        shape = list(out.shape)
        symbol = ARITHMETIC.get(name)
        if symbol == "+" and len(tensors) == 2 and all(labels) and shape == self.shape and \
                sum(lab in self._streams for lab in labels) == 1:
            # One operand is the residual stream, the other a branch's output: a residual addition.
            self._residuals += 1
            stream = next(lab for lab in labels if lab in self._streams)
            branch = next(lab for lab in labels if lab not in self._streams)
            out_label = f"residual {self._residuals}"
            self.nodes.append({"kind": "residual", "name": "add", "inputs": [stream, branch], "stream": stream,
                               "branch": branch, "output": out_label, "shape": shape})
            self._streams.add(out_label)
            self.label(out, out_label)
            return
        parts = [lab or "?" for lab in labels]
        if symbol and len(parts) == 2:
            expr = f"{parts[0]} {symbol} {parts[1]}"
        elif symbol and len(parts) == 1:
            expr = f"{parts[0]} {symbol} c"
        else:
            expr = f"{_op_title(name, kwargs)}({', '.join(parts)})"
        self.nodes.append({"kind": "op", "name": _op_title(name, kwargs), "inputs": parts, "output": expr,
                           "shape": shape})
        self.label(out, expr)

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the block's name and class, its input/output labels and the call tree."""
        return {"block": self.name, "class": self.cls, "input": self.input_label, "output": self.output_label,
                "shape": self.shape, "nodes": self.nodes}


def _op_title(name: str, kwargs: dict[str, Any]) -> str:
    base = SHOWN_OPS.get(name, name.strip("_"))
    if base == "gelu":
        return "gelu_tanh" if kwargs.get("approximate") == "tanh" else "gelu_erf"
    return base


class Tracer:
    """Hooks on one loaded model's modules (see the module docstring); a context manager."""

    def __init__(self, anatomy: Any):
        self.anatomy = anatomy
        self.captured: dict[str, Any] = {}
        self.busy = False
        self._handles: list[Any] = []
        self._softmax: list[Callable[[int, Any, Any], None]] = []
        self._records: dict[int, BlockRecord] = {}
        self._block_index: int | None = None
        self._mode: Any = None
        self._mode_on = False
        self._blocks_hooked = False

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_mode()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Run our own hook code without recording its ops as the model's."""
        was, self.busy = self.busy, True
        try:
            yield
        finally:
            self.busy = was

    # ------------------------------------------------------------------ simple hooks
    def capture_output(self, module: Any, key: str) -> None:
        """Keep a copy of `module`'s (main) output of its latest call under `key`."""
        def hook(_m: Any, _args: Any, output: Any) -> None:
            with self.quiet():
                t = main_output(output)
                self.captured[key] = t.detach().clone() if t is not None else None
        self._handles.append(module.register_forward_hook(hook))

    def capture_input(self, module: Any, key: str) -> None:
        """Keep a copy of `module`'s hidden-state input of its latest call under `key`."""
        def hook(_m: Any, args: Any, kwargs: Any) -> None:
            with self.quiet():
                t = first_tensor(args, kwargs)
                self.captured[key] = t.detach().clone() if t is not None else None
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def replace_output(self, module: Any, fn: Callable[[Any], Any]) -> None:
        """`module` returns fn(its output) instead of its output (a probe with known values)."""
        def hook(_m: Any, _args: Any, output: Any) -> Any:
            with self.quiet():
                return _with_main_output(output, fn(main_output(output)))
        self._handles.append(module.register_forward_hook(hook))

    # ------------------------------------------------------------------ inside the blocks
    def on_softmax(self, fn: Callable[[int, Any, Any], None]) -> None:
        """Call fn(block_index, scores, probabilities) for every softmax inside a decoder block."""
        self._softmax.append(fn)
        self._hook_blocks()

    def record_block(self, index: int) -> BlockRecord:
        """Record decoder block `index` as a call tree with its data flow (see BlockRecord)."""
        an = self.anatomy
        block = an.blocks[index]
        roles = {}
        for role in an.roles:
            m = an.part(index, role)
            if m is not None:
                roles[id(m)] = role
        rec = BlockRecord(an.block_names[index], block, roles)
        self._records[index] = rec
        for rel, module in block.named_modules():
            if not rel or "_torch_params" in rel or type(module).__name__ in ("ParameterDict", "ParameterList"):
                continue
            self._handles.append(module.register_forward_pre_hook(
                self._guard(lambda _m, a, k, rel=rel, mod=module: rec.enter_module(rel, mod, a, k)),
                with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._guard(lambda _m, _a, o: rec.exit_module(o))))
        self._hook_blocks()
        return rec

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def hook(*args: Any) -> None:
            if self._block_index is None:
                return
            with self.quiet():
                fn(*args)
        return hook

    def _hook_blocks(self) -> None:
        if self._blocks_hooked:
            return
        self._blocks_hooked = True
        for i, block in enumerate(self.anatomy.blocks):
            def pre(_m: Any, args: Any, kwargs: Any, i: int = i) -> None:
                with self.quiet():
                    self._block_index = i
                    if i in self._records:
                        self._records[i].enter_block(first_tensor(args, kwargs))
                    self._start_mode()

            def post(_m: Any, _args: Any, output: Any, i: int = i) -> None:
                with self.quiet():
                    self._stop_mode()
                    if i in self._records:
                        self._records[i].exit_block(output)
                    self._block_index = None

            self._handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(block.register_forward_hook(post))

    def _start_mode(self) -> None:
        if self._mode is None:
            self._mode = _op_mode(self)
        if not self._mode_on:
            self._mode.__enter__()
            self._mode_on = True

    def _stop_mode(self) -> None:
        if self._mode_on:
            self._mode_on = False
            self._mode.__exit__(None, None, None)

    def _on_op(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        i = self._block_index
        if i is None:
            return
        name = getattr(func, "__name__", "") or ""
        # attention scores are [B, H, T, S] (keras-hub: [B, K, G, T, S]); a router's softmax over experts [N, E]
        # (Gemma 4's mixture of experts) is not attention
        if name == "softmax" and self._softmax and args and getattr(args[0], "ndim", 0) >= 4:
            for fn in self._softmax:
                fn(i, args[0], out)
        rec = self._records.get(i)
        if rec is not None and rec.calls == 1:
            rec.op(name, args, kwargs, out)


__all__ = ["Tracer", "BlockRecord", "first_tensor", "main_output"]
