"""Checkpoint: a GemmaSpec plus lazy tensors under canonical names, a tokenizer and where it came from.

Canonical names are Hugging Face's Gemma 2/3 names for every family (so the pre-FFN norm is always
`pre_feedforward_layernorm`, even for Gemma 1, whose HF name for it is `post_attention_layernorm`).
Canonical layout is HF's: linear weights [out, in], norm weights zero-centred (the layer adds 1).
Nothing reads tensor bytes until `TensorRef.load()` is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .dtypes import FLOAT_DTYPES  # noqa: F401 - re-exported for the readers
from .errors import InputError, UnsupportedError
from .families import FAMILY_TABLE
from .heads import EmbeddingHead
from .roles import LAYER_ROLES, NORM_ROLES, ROLE_TABLE, ROLES, layer_roles, role_shape, top_roles  # noqa: F401
from .spec import GemmaSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .tokenizer import Tokenizer

# ----------------------------------------------------------------------------- canonical roles
# The roles, their name templates and shapes are rows of roles.ROLE_TABLE (imported above). FLOAT_DTYPES (stored
# dtypes that are plain floats) is dtypes' table, re-exported here for the readers.


def compile_names(templates: dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
    """A name table {role: 'model.layers.{i}.x.weight'} -> matchers for `match_name`: every format's reverse
    mapping (file name -> role and layer) is derived from its one table this way, never written twice."""
    # At most 6 digits: a layer index of 5000 digits is no layer (and int() refuses to parse it).
    return [(role, re.compile("^" + re.escape(t).replace(r"\{i\}", r"(?P<i>\d{1,6})") + "$"))
            for role, t in templates.items()]


def match_name(patterns: list[tuple[str, re.Pattern[str]]], name: str) -> tuple[str, int | None] | None:
    """(role, layer or None) of `name` under the matchers of `compile_names`; None when it is no role."""
    for role, pattern in patterns:
        m = pattern.match(name)
        if m:
            return role, (int(m.group("i")) if "i" in pattern.groupindex else None)
    return None


_compiled: tuple[tuple[tuple[str, str], ...], list[tuple[str, re.Pattern[str]]]] = ((), [])


def _role_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """The matchers of the role table, compiled again only when its rows change."""
    global _compiled
    key = tuple((k, r.template) for k, r in ROLE_TABLE.items())
    if key != _compiled[0]:
        _compiled = (key, compile_names(dict(key)))
    return _compiled[1]


def fill_name(template: str, layer: int | None = None) -> str:
    """A name table's template for one layer ('model.layers.{i}.x' -> 'model.layers.3.x'); top-level names as
    they are."""
    return template.format(i=layer) if "{i}" in template else template


def canonical_name(role: str, layer: int | None = None) -> str:
    return fill_name(ROLES[role], layer)


def parse_canonical(name: str) -> tuple[str, int | None] | None:
    """'model.layers.3.self_attn.q_proj.weight' -> ('q', 3); None for a name that is no role."""
    return match_name(_role_patterns(), name)


def expected_tensors(spec: GemmaSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor a checkpoint of `spec` must hold, with its canonical shape, in file order: the input
    embeddings (top-level embedding rows that stand for themselves), every layer's roles, then the other top-level
    rows (final norm, an untied output) - all as the role table's rows and presence rules say."""
    top = top_roles(spec)
    first = [r for r in top if ROLE_TABLE[r].kind == "embedding" and ROLE_TABLE[r].tied_to is None]
    out: dict[str, tuple[int, ...]] = {canonical_name(r): role_shape(spec, r) for r in first}
    per_layer = layer_roles(spec)
    for i in range(spec.num_layers):
        for role in per_layer:
            if ROLE_TABLE[role].applies(spec, i):  # Gemma 4: KV-shared layers hold no k/v, K=V layers no v
                out[canonical_name(role, i)] = role_shape(spec, role, i)
    for r in top:
        if r not in first:
            out[canonical_name(r)] = role_shape(spec, r)
    return out


# ----------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class TensorRef:
    """A tensor known by its header: canonical name, canonical shape, dtype, and how to get it.

    `loader()` returns a numpy array in canonical layout and the stored dtype (bfloat16 as
    ml_dtypes.bfloat16). `chunks(max_bytes)`, when the stored layout already is the canonical one,
    yields the raw bytes in pieces so that large tensors can be copied without holding them.
    `span` = (file, offset, nbytes) says where those raw bytes lie, so that a writer can write them from maps of
    the file's pages (O_DIRECT reads them in place) without copying them through Python; it implies `chunks`.
    `stored` = (file, offset, nbytes, arrays.Layout): where the bytes of a tensor stored in another layout lie,
    and the re-layout to the canonical one, so that a converter can stream it band by band.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # float32 | bfloat16 | float16 | a GGUF quantisation type name such as Q8_0
    loader: Callable[[], "np.ndarray"]
    nbytes: int = 0  # bytes as stored
    origin: str = ""  # "file:key" where it lives, for messages
    chunks: Callable[[int], Iterator[bytes]] | None = None
    span: tuple[str, int, int] | None = None
    stored: tuple[str, int, int, Any] | None = None

    def __post_init__(self) -> None:
        if self.chunks is None and self.span is not None:
            path, start, nbytes = self.span

            def chunks(size: int) -> Iterator[bytes]:
                from .tensorio import iter_bytes

                return iter_bytes(path, start, nbytes, size)

            object.__setattr__(self, "chunks", chunks)

    def load(self) -> "np.ndarray":
        arr = self.loader()
        if tuple(arr.shape) != tuple(self.shape):
            raise InputError(self.origin or self.name,
                             f"tensor {self.name} has shape {tuple(arr.shape)}, header said {self.shape}")
        return arr

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Checkpoint:
    """Spec + canonical tensors + tokenizer + provenance. Built by a format reader or from a card."""

    spec: GemmaSpec
    tensors: dict[str, TensorRef]
    source: str
    format: str  # "hf" | "keras" | "gguf" | "gemma-pytorch" | "card"
    tokenizer: "Tokenizer | None" = None
    notes: list[str] = field(default_factory=list)  # facts the reader wants the user to know
    ignored: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # name -> (shape, dtype)
    config: dict[str, Any] = field(default_factory=dict)  # the raw config the spec came from (for lint)
    files: list[str] = field(default_factory=list)  # the files that make up the checkpoint
    quantization: dict[str, Any] | None = None  # GGUF: storage types and bits per weight per tensor group
    assumed: frozenset[str] = frozenset()  # spec fields the format does not store (filled with defaults)
    hub: dict[str, Any] | None = None  # how a hub id / handle / preset name was resolved (hub.py)
    base_model: bool = False  # a decoder without an LM head (HF GemmaModel & co.): logits only by tying
    # A stored lm_head the reader set aside (HF: lm_head.weight under tie_word_embeddings): kept so that verify
    # and the lint compare it with the embedding without reopening files.
    lm_head_set_aside: TensorRef | None = None
    # An embedding model's modules after the transformer (sentence-transformers: pooling, dense layers, normalise),
    # read from the directory or, for a card, published; None for a language model.
    embedding_head: EmbeddingHead | None = None
    # The heads' weights under canonical names (heads.dense_name: "head.dense.0.weight", [out, in]), apart from the
    # transformer's `tensors`: converted and compared with them, counted apart.
    head_tensors: dict[str, TensorRef] = field(default_factory=dict)
    # sentence-transformers' own settings files (config_sentence_transformers.json: prompts, similarity;
    # sentence_bert_config.json: max_seq_length), as read, kept so that a conversion back writes them again
    head_config: dict[str, Any] = field(default_factory=dict)

    def require(self, command: str) -> None:
        """Refuse, with one line, a command that does not handle this checkpoint's family yet (its row's
        `commands`)."""
        row = FAMILY_TABLE.get(self.spec.family)
        if row is not None and not row.supports(command):
            raise UnsupportedError(f"{self.source}: {command} does not support {row.title} yet "
                                   f"(supported: {', '.join(row.commands or ())})")

    def require_writer(self, fmt: str) -> None:
        """Refuse, with one line, a `convert` target that does not handle this checkpoint's family yet (its row's
        `writers`)."""
        row = FAMILY_TABLE.get(self.spec.family)
        if row is not None and not row.writes(fmt):
            raise UnsupportedError(f"{self.source}: convert --to {fmt} does not support {row.title} yet "
                                   f"(supported: --to {', '.join(row.writers or ())})")

    @property
    def lm_head(self) -> str:
        """Where the logits come from: "stored" (an lm_head matrix), "tied" (the embedding), "none" (a base model
        that has no LM head at all)."""
        row = FAMILY_TABLE.get(self.spec.family)
        if self.base_model or (row is not None and not row.rules.lm_head):
            return "none"
        return "tied" if self.spec.tied_embeddings else "stored"

    @property
    def is_card(self) -> bool:
        return self.format == "card"

    @property
    def is_quantized(self) -> bool:
        """Whether any tensor is stored quantized (GGUF Q8_0, Q4_K, ...) rather than as a float dtype."""
        return any(t.dtype not in FLOAT_DTYPES for t in self.tensors.values())

    def tensor(self, role: str, layer: int | None = None) -> TensorRef:
        return self.tensors[canonical_name(role, layer)]

    @property
    def size_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def dtype_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return counts


def check_against_spec(spec: GemmaSpec, tensors: dict[str, TensorRef], config_path: str,
                       tensors_path: str) -> None:
    """Raise an InputError naming the config and the tensor file when they disagree.

    A tied spec with an `lm_head` present is allowed only when the reader decided to keep it (untied);
    unknown names are the reader's business (it reports them as ignored).
    """
    expected = expected_tensors(spec)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InputError(tensors_path, f"tensors required by {config_path} are missing: "
                                       f"{', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise InputError(tensors_path, f"{name} has shape {list(got)} but {config_path} implies "
                                           f"{list(shape)} ({describe_shape_source(spec, name)})")
    extra = [n for n in tensors if n not in expected]
    if extra:
        raise InputError(tensors_path, f"tensors not described by {config_path}: {', '.join(extra[:3])}"
                                       + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""))


def describe_shape_source(spec: GemmaSpec, name: str) -> str:
    """Which config values a tensor's expected shape comes from (its role row's shape formula)."""
    parsed = parse_canonical(name)
    if parsed is None:
        return f"hidden_size={spec.hidden_size}"
    return ROLE_TABLE[parsed[0]].explain(spec, parsed[1])


def card_checkpoint(name: str) -> Checkpoint:
    from .spec import card

    from .spec import card_head

    spec = card(name)
    return Checkpoint(spec=spec, tensors={}, source=name, format="card", embedding_head=card_head(name))
