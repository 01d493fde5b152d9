"""What a forward pass shows: `observe` hooks a running model's real modules (trace.py) during two forward passes
over a fixed token sequence longer than any sliding window, probes single modules with known inputs, and returns
an `Observation` that the checks (checks.py) read:

    pass 1 (as run)   the call order and data flow of decoder block 0; the input of block 0 (the scaled
                      embedding); q/k/v (and q/k norm) outputs of block 0; the attention scores and
                      probabilities of every block; the final norm's output and the logits
    pass 2 (probes)   the final hidden state x 10^4 (does the output saturate at a soft cap?); block 0's
                      queries x 10^4 (do the attention scores?); block 0's FFN gate output replaced by a grid
                      of known values and its up projection by ones, so the down projection receives
                      act(grid) (which activation?)
    module probes     every norm of block 0, the final norm and the q/k norms called on x = +-1 (unit RMS):
                      y / x against the module's own weight w (does it apply 1 + w or w?)

Pass 2 feeds the gate grid to every block's FFN (each block's down projection then receives act(grid), whatever
the blocks before it did), so the activation and any activation sparsity are seen layer by layer. On a model
whose blocks carry AltUp streams and LAuReL (Gemma 3n), pass 1 also keeps block 0's inputs and outputs of the
parts that combine them (`BlockValues`), from which the checks recompute the block's arithmetic.

Tensors in an Observation are CPU float64 (or the runtime's dtype where the checks compare bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .trace import is_norm

PROBE_SCALE = 1e4  # hidden states and queries are multiplied by this to push logits far past any soft cap
GRID = (-6.0, 6.0)  # the known gate values fed to the FFN activation
MASKED = -1e6  # a score at or below this is a masked key (runtimes add -inf, -1e9 or the dtype's minimum)
TIED_POSITIONS = 16  # whether logits = h @ E^T is settled by a few positions, not the whole sequence
QKV_ROLES = ("q", "k", "v", "q_norm", "k_norm")


@dataclass
class LayerScores:
    """The attention scores of one block as its softmax saw them (the first call per block)."""

    heads: int  # score maps per sequence (query heads)
    keys_last: list[int]  # per head: keys the last query attends to (not masked)
    queries: int
    diag: Any = None  # block 0 only: [H, T] float64, score[h, t, t]
    seen: Any = None  # block 0 only: [H, T, S] bool, the unmasked scores
    max_abs: float | None = None  # block 0 only: max |score| over the unmasked ones


@dataclass
class EmbeddingObservation:
    x: Any  # block 0's input for the sequence [T, d], in the runtime's dtype
    rows: Any  # the embedding rows of the tokens [T, d], in the runtime's dtype
    d: int  # the embedding width


@dataclass
class TiedObservation:
    """The last TIED_POSITIONS positions' logits and their projections through the embedding (and a separate
    output matrix): a few [16, V] float64 arrays, where the whole sequence (Gemma 2's default 4,104 positions x
    256,000 rows) would be 8 GB each."""

    logits: Any
    via_embedding: Any
    shares_storage: bool  # the output projection is the embedding (or shares its storage)
    via_output: Any = None  # through the separate output matrix, when there is one


@dataclass
class ActivationObservation:
    x: Any  # the grid fed as the gate output
    y: Any  # what the down projection received: act(x) * 1


# Block 0's parts whose inputs and outputs the AltUp / LAuReL checks read, by their path in the block (transformers'
# names, which the reference runtime uses too); a runtime without `altup.prediction_coefs` records none of them.
BLOCK_POINTS = {"attn_norm": "input_layernorm", "attention": "self_attn", "post_attn_norm": "post_attention_layernorm",
                "ffn_norm": "pre_feedforward_layernorm", "mlp": "mlp", "post_ffn_norm": "post_feedforward_layernorm",
                "altup_predict": "altup.prediction_coefs", "altup_correct": "altup.correction_coefs",
                "laurel_left": "laurel.linear_left", "laurel_norm": "laurel.post_laurel_norm"}


@dataclass
class BlockValues:
    """Block 0's streams in and out ([n, T, d] float64) and, per part of BLOCK_POINTS, what it received and returned
    (first sequence, float64): `inputs["attn_norm"]`, `outputs["altup_predict"]`, ..."""

    streams_in: Any
    streams_out: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class NormProbe:
    name: str
    ratio: Any  # y / x for x = +-1
    w: Any  # the module's own weight


@dataclass
class MaskObservation:
    """Which way information flows: the first token's final state when only the last token is changed (zero under
    a causal mask), and whether block 0's first query saw any later key."""

    changed: float  # max |final[0] after - before|
    scale: float  # max |final[0]| as run
    first_query_sees_later: bool | None  # from block 0's softmax (None when the scores were not observable)


@dataclass
class Observation:
    """Everything the checks read, from the hooked forward passes and module probes of one model."""

    runtime: str
    dtype: str
    tokens: int
    num_layers: int
    layouts: dict[str, str]  # q/k/v output layout per role: "bthd", "bhtd" or "bt(hd)"
    head_dim: int | None
    graph: dict[str, Any]  # block 0's recorded layer graph (trace.py's JSON form)
    scores: dict[int, LayerScores]
    logits_max: float | None  # max |logits| as run (None: no LM head)
    embedding: EmbeddingObservation
    qkv: dict[str, Any]  # block 0's q/k/v (and q_norm/k_norm) outputs, by role
    tied: TiedObservation | None  # None: no LM head
    logits_probe_max: float | None  # max |logits| with the final hidden state x PROBE_SCALE
    attention_probe_max: float | None  # max |score| of block 0 with its queries x PROBE_SCALE
    activation: ActivationObservation | None
    norms: list[NormProbe] = field(default_factory=list)
    norm_means: list[float] = field(default_factory=list)  # the mean of every norm weight, all blocks
    mask: MaskObservation | None = None
    final: Any = None  # the final norm's output for the sequence [T, d], float64 (an embedding model's pooling reads it)
    # every block's activation probe (block 0's is `activation`), by block index
    layer_activations: dict[int, ActivationObservation] = field(default_factory=dict)
    block_values: BlockValues | None = None  # AltUp / LAuReL models only
    family: dict[str, Any] = field(default_factory=dict)  # a family observer's own pass (FAMILY_OBSERVERS)


def observe(model: Any, ids: list[int]) -> Observation:
    """The Observation of `model` (a runtimes.LoadedModel) run on `ids`."""
    import torch

    from .trace import Tracer

    an = model.anatomy()
    scores: dict[int, LayerScores] = {}

    def on_softmax(i: int, s: Any, p: Any) -> None:
        b, t, k = s.shape[0], s.shape[-2], s.shape[-1]
        s = s.detach().float().reshape(b, -1, t, k)[0]  # [H, T, S]: keras-hub's [B, K, G, T, S] too
        seen = s > MASKED
        entry = LayerScores(heads=s.shape[0], keys_last=seen[:, -1, :].sum(-1).tolist(), queries=t)
        if i == 0:
            entry.diag = torch.diagonal(s, dim1=-2, dim2=-1).double().cpu()  # [H, T]
            entry.seen = seen
            entry.max_abs = float(s[seen].abs().max())
        scores.setdefault(i, entry)

    # ---------------------------------------------------------------- pass 1: as run
    points = _block_points(an.blocks[0])
    with Tracer(an) as tr:
        rec = tr.record_block(0)
        tr.capture_input(an.blocks[0], "block0_in")
        tr.capture_output(an.final_norm, "final")
        if points:
            tr.capture_output(an.blocks[0], "block0_out")
            for key, m in points.items():
                tr.capture_input(m, f"in:{key}")
                tr.capture_output(m, f"out:{key}")
        for role in QKV_ROLES:
            m = an.part(0, role)
            if m is not None:
                tr.capture_output(m, role)
        tr.on_softmax(on_softmax)
        res = model.forward([ids])
        got = dict(tr.captured)
    # an embedding model has no logits: no tied projection and no final soft cap to observe
    graph = rec.as_dict()
    logits_max = float(res.logits.abs().max()) if res.logits is not None else None
    tied = _tied_observation(an, got["final"], res.logits) if res.logits is not None else None
    mask = _mask_observation(model, an, ids, got["final"], scores)
    ids_t = torch.as_tensor(ids)
    emb_w = an.embedding_weight
    x0 = got["block0_in"]
    if points and x0.ndim == 4:  # AltUp streams [n, B, T, d]: stream 0 is the embedding
        x0 = x0[0]
    embedding = EmbeddingObservation(x=x0[0].cpu(), rows=emb_w.detach()[ids_t.to(emb_w.device)].cpu(),
                                     d=int(emb_w.shape[-1]))
    block_values = _block_values(got, points) if points else None

    # ---------------------------------------------------------------- pass 2: probes
    probe: dict[str, Any] = {}

    def gate_grid(t: Any) -> Any:
        grid = torch.linspace(GRID[0], GRID[1], t.shape[-1], device=t.device).to(t.dtype)
        probe["grid"] = probe[("grid", t.shape[-1])] = grid.double().cpu()  # by width: layers' FFNs may differ
        return grid.expand(t.shape).contiguous()

    def on_softmax_probe(i: int, s: Any, _p: Any) -> None:
        if i == 0 and 0 in scores and "probe_max_abs" not in probe:
            s = s.detach().float().reshape(s.shape[0], -1, s.shape[-2], s.shape[-1])[0]
            probe["probe_max_abs"] = float(s[scores[0].seen].abs().max())

    # The final soft cap is probed in a pass of its own: the block-0 probes below change the network, and a real
    # model's logits (Gemma 3 270M: max 194 as run) are not those of the changed one, so the growth ratio would
    # measure the change, not the cap (it read 1897 for 10000 on the real weights: "neither saturated nor linear").
    logits_probe_max = None
    if logits_max is not None:
        with Tracer(an) as tr:
            tr.replace_output(an.final_norm, lambda t: t * PROBE_SCALE)
            logits_probe_max = float(model.forward([ids]).logits.abs().max())
    with Tracer(an) as tr:
        qpoint = an.part(0, "q_norm")  # after the QK-norm, which would undo the scale
        if qpoint is None:
            qpoint = an.part(0, "q")
        tr.replace_output(qpoint, lambda t: t * PROBE_SCALE)
        for i in range(len(an.blocks)):  # every block's FFN gets the grid: its down projection sees act(grid)
            gate, up, down = an.part(i, "gate"), an.part(i, "up"), an.part(i, "down")
            if gate is not None and up is not None and down is not None:
                tr.replace_output(gate, gate_grid)
                tr.replace_output(up, lambda t: torch.ones_like(t))
                tr.capture_input(down, f"down_in{i}")
        tr.on_softmax(on_softmax_probe)
        model.forward([ids])
        downs = {i: tr.captured.get(f"down_in{i}") for i in range(len(an.blocks))}
    layer_activations = {}
    for i, down_in in downs.items():
        if down_in is not None:
            layer_activations[i] = ActivationObservation(x=probe[("grid", down_in.shape[-1])],
                                                         y=down_in.reshape(-1, down_in.shape[-1])[0].double().cpu())
    activation = layer_activations.get(0)

    return Observation(
        runtime=model.runtime, dtype=model.dtype, tokens=len(ids), num_layers=len(an.blocks), layouts=an.layouts,
        head_dim=an.head_dim, graph=graph, scores=scores, logits_max=logits_max, embedding=embedding,
        qkv={k: got[k].cpu() for k in QKV_ROLES if got.get(k) is not None}, tied=tied,
        logits_probe_max=logits_probe_max,
        attention_probe_max=probe.get("probe_max_abs"), activation=activation,
        # ------------------------------------------------------------ module probes: the norms
        norms=_probe_norms(an, rec), norm_means=_norm_weight_means(an), mask=mask,
        final=got["final"][0].double().cpu(), layer_activations=layer_activations, block_values=block_values)


def _block_points(block: Any) -> dict[str, Any]:
    """Block 0's BLOCK_POINTS modules, when it has AltUp's coefficients (else none: the checks skip)."""
    out = {}
    for key, path in BLOCK_POINTS.items():
        obj = block
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if obj is not None:
            out[key] = obj
    return out if "altup_predict" in out else {}


def _block_values(got: dict[str, Any], points: dict[str, Any]) -> BlockValues:
    def first(t: Any) -> Any:  # the first sequence, CPU float64
        return t[0].double().cpu() if t is not None else None

    return BlockValues(streams_in=got["block0_in"][:, 0].double().cpu(), streams_out=got["block0_out"][:, 0].double().cpu(),
                       inputs={k: first(got.get(f"in:{k}")) for k in points},
                       outputs={k: first(got.get(f"out:{k}")) for k in points})


def _mask_observation(model: Any, an: Any, ids: list[int], final: Any, scores: dict[int, LayerScores]) -> Any:
    """The last token replaced by another id: how far the first token's final state moves."""
    from .trace import Tracer

    other = list(ids)
    other[-1] = (ids[-1] + 1) % int(an.embedding_weight.shape[0])
    with Tracer(an) as tr:
        tr.capture_output(an.final_norm, "final")
        model.forward([other])
        after = tr.captured["final"]
    before = final[0, 0].double().cpu()
    s0 = scores.get(0)
    sees = bool(s0.seen[:, 0, 1:].any()) if s0 is not None and s0.seen is not None and len(ids) > 1 else None
    return MaskObservation(changed=float((after[0, 0].double().cpu() - before).abs().max()),
                           scale=float(before.abs().max()), first_query_sees_later=sees)


def _weight_of(module: Any) -> Any:
    """A norm module's own weight: its only 1-D parameter (HF `weight`, keras-hub `scale`)."""
    params = [p for p in module.parameters() if p.dim() == 1]
    return params[0] if len(params) == 1 else None


# Norms nested in a block's parts that the norm probes include where a runtime has them (Gemma 3n's AltUp router
# and LAuReL; transformers' names, which the reference runtime uses too)
NESTED_NORMS = ("altup.router_norm", "laurel.post_laurel_norm")


def _norm_modules(an: Any, block: int) -> list[tuple[str, Any]]:
    """The norms a block calls directly (by the runtime's class names), then its q/k norms and NESTED_NORMS."""
    out = [(n, m) for n, m in an.blocks[block].named_children() if is_norm(m)]
    for role in ("q_norm", "k_norm"):
        m = an.part(block, role)
        if m is not None:
            out.append((an.roles[role], m))
    for path in NESTED_NORMS:
        m = an.blocks[block]
        for attr in path.split("."):
            m = getattr(m, attr, None)
        if m is not None:
            out.append((path, m))
    return out


def _probe_norms(an: Any, rec: Any) -> list[NormProbe]:
    import torch

    called = {n["name"] for n in rec.nodes if n.get("kind") == "module"}
    targets = [(n, m) for n, m in _norm_modules(an, 0) if n in called or "." in n] + [("final norm", an.final_norm)]
    out = []
    for name, module in targets:
        w = _weight_of(module)
        if w is None:
            continue
        n = w.shape[0]
        # x = +1, -1, +1, ...: unit RMS, exact in every dtype; y / x is then the factor the norm applies.
        x = torch.tensor([(-1.0) ** i for i in range(n)], device=w.device).to(w.dtype).reshape(1, 1, n)
        with torch.no_grad():
            y = module(x)
        r = (y.double().reshape(-1) / x.double().reshape(-1)).cpu()
        out.append(NormProbe(name=name, ratio=r, w=w.detach().double().cpu()))
    return out


def _norm_weight_means(an: Any) -> list[float]:
    means = []
    for i in range(len(an.blocks)):
        for _n, m in _norm_modules(an, i):
            w = _weight_of(m)
            if w is not None:
                means.append(float(w.detach().double().mean()))
    w = _weight_of(an.final_norm)
    if w is not None:
        means.append(float(w.detach().double().mean()))
    return means


def _project(h: Any, weight: Any) -> Any:
    """h [T, d] @ W^T in float32 on W's device, one vocabulary slice at a time -> CPU float64 [T, V]."""
    import torch

    hw = h.to(device=weight.device, dtype=torch.float32)
    parts = [(hw @ chunk.detach().float().T).double().cpu() for chunk in weight.split(32768)]
    return torch.cat(parts, dim=-1)


def _tied_observation(an: Any, final: Any, logits: Any) -> TiedObservation:
    h = final.reshape(-1, final.shape[-1])[-TIED_POSITIONS:]
    logits = logits.reshape(-1, logits.shape[-1])[-TIED_POSITIONS:]
    w = an.output_weight
    same = w is None or w is an.embedding_weight or (
        w.shape == an.embedding_weight.shape and w.data_ptr() == an.embedding_weight.data_ptr())
    return TiedObservation(logits=logits.double(), via_embedding=_project(h, an.embedding_weight),
                           shares_storage=bool(same), via_output=None if same else _project(h, w))


# What a family's own checks need beyond `observe`: a pass of their own over the loaded model, `fn(ckpt, model, ids)`
# (checks_gemma4.py), run by verify while the model is loaded when the family row lists one of `checks`; its result
# is kept in Observation.family under the observer's name.
FAMILY_OBSERVERS: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {}


def register_observer(name: str, checks: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        FAMILY_OBSERVERS[name] = (checks, fn)
        return fn
    return wrap


def family_observations(ckpt: Any, model: Any, ids: list[int]) -> dict[str, Any]:
    """Every observer's result that the checkpoint's family row needs (by the checks it lists)."""
    from .families import FAMILY_TABLE

    row = FAMILY_TABLE.get(ckpt.spec.family)
    wanted = set(row.checks) if row is not None else set()
    return {name: fn(ckpt, model, ids) for name, (checks, fn) in FAMILY_OBSERVERS.items() if wanted & set(checks)}


__all__ = ["FAMILY_OBSERVERS", "register_observer", "family_observations", "Observation", "BlockValues",
           "BLOCK_POINTS", "MaskObservation", "LayerScores", "EmbeddingObservation", "TiedObservation",
           "ActivationObservation", "NormProbe", "observe", "PROBE_SCALE", "GRID", "MASKED", "TIED_POSITIONS"]
