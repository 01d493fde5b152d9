"""GGUF `gemma3n` (llama.cpp): Gemma 3n's text decoder as llama.cpp's converter (Gemma3NModel) writes it, both ways.

What differs from the other Gemma architectures (gguf.py's table):
- norms are stored as they are (Gemma 3n's RMSNorm applies w, no +1), in float32;
- the AltUp projections in and out are stacked: HF's altup_projections.{0,1,2} [H, H] become one `altup_proj`
  [3, H, H] (numpy order; GGUF ne [H, H, 3]), likewise `altup_unembd_proj`; reading takes the stack apart;
- the embeddings are zero-padded to vocab_size rows (the converter pads `embed_tokens_per_layer`, 262,144 rows in
  the releases, to 262,400); reading cuts the per-layer table back to its own vocabulary
  (`gemma_inspect.vocab_size_per_layer_input`, a key of ours; absent, transformers' 262,144 when the table is
  larger, else the table's rows);
- `correct_output_scale` is named with `.weight` (`blk.N.altup_correct_scale.weight`);
- activation sparsity is stored per layer as the Gaussian quantile the gate's cut-off uses,
  `activation_sparsity_scale` = Phi^-1(p) in float32 as torch computes it (the converter's value; -inf for a dense
  layer); reading inverts it to the shortest decimal whose quantile is the stored float (0.95 -> 1.6448534 -> 0.95);
- metadata keys of its own: altup.active_idx, altup.num_inputs, embedding_length_per_layer_input,
  attention.shared_kv_layers, attention.sliding_window_pattern (one bool per layer), per-layer
  feed_forward_length.

What llama.cpp then hard-codes (llama_model_gemma3n / its graph), which the writer checks before writing: 20 layers
that compute K/V whatever attention.shared_kv_layers says, sparsity 0.95 on the first 10 layers whatever the array
says, 4 AltUp streams, per-layer inputs 256 wide and a LAuReL rank of 64 (the converter's
embedding_length_per_layer_input is not read back). Its loader requires attn_k, attn_v and attn_k_norm on every
layer, the KV-shared ones included (the released checkpoints store them; transformers 5 neither builds nor saves
them there): the writer fills those it lacks (k/v zeros, k_norm ones, as keras_gemma3n does for keras-hub), the
reader sets them aside. Its Gaussian top-k divides the variance by n - 1 where transformers and keras-hub divide by n
(the cut-off moves by a factor sqrt(n / (n - 1)); a numerical difference, not a layout one), and ids beyond the
per-layer table read the zero padding where transformers reads row 0.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from .gguf import _Planned, refuse_unless_forced, write_file

ARCH = "gemma3n"
PER_LAYER_VOCAB_KEY = "gemma_inspect.vocab_size_per_layer_input"  # ours: what undoes the per-layer table's padding
HF_PER_LAYER_VOCAB = 262_144  # transformers' Gemma3nTextConfig default (the releases' table)
# What llama.cpp hard-codes for gemma3n (llama_model_gemma3n::load_arch_hparams and its graph)
LLAMA_CPP_KV_LAYERS = 20  # n_layer_kv_from_start
LLAMA_CPP_SPARSE_LAYERS, LLAMA_CPP_SPARSITY = 10, 0.95  # n_layer_sparsity, f_sparsity_std_mul = Phi^-1(0.95)
LLAMA_CPP_ALTUP = 4  # the converter asserts altup_num_inputs == 4
LLAMA_CPP_PER_LAYER_INPUT, LLAMA_CPP_LAUREL_RANK = 256, 64  # n_embd_altup, laurel_rank (hparams' defaults)
LLAMA_CPP_SWA_PERIOD = 5  # set_swa_pattern(5) when the file has no pattern
LLAMA_CPP_FINAL_CAP = 30.0  # f_final_logit_softcapping when the key is absent
LLAMA_CPP_SWA_BASE = 10_000.0  # rope_freq_base_train_swa when rope.freq_base_swa is absent


@dataclass(frozen=True)
class GGUFVar:
    """One row of the name table: the HF name (`{i}` a layer, `{k}` an AltUp projection), the gguf package's
    MODEL_TENSOR member whose TENSOR_NAMES entry is the GGUF name, and how the tensor is stored: "same", "stack"
    (the {k} projections as one [n-1, H, H] tensor), "pad" (rows zero-padded to vocab_size)."""

    hf: str
    member: str
    how: str = "same"


_L = "model.layers.{i}."
VARS: tuple[GGUFVar, ...] = (
    GGUFVar("model.embed_tokens.weight", "TOKEN_EMBD", "pad"),
    GGUFVar("model.embed_tokens_per_layer.weight", "PER_LAYER_TOKEN_EMBD", "pad"),
    GGUFVar("model.per_layer_model_projection.weight", "PER_LAYER_MODEL_PROJ"),
    GGUFVar("model.per_layer_projection_norm.weight", "PER_LAYER_PROJ_NORM"),
    GGUFVar("model.altup_projections.{k}.weight", "ALTUP_PROJ", "stack"),
    GGUFVar("model.altup_unembed_projections.{k}.weight", "ALTUP_UNEMBD_PROJ", "stack"),
    GGUFVar(_L + "input_layernorm.weight", "ATTN_NORM"),
    GGUFVar(_L + "self_attn.q_proj.weight", "ATTN_Q"),
    GGUFVar(_L + "self_attn.k_proj.weight", "ATTN_K"),
    GGUFVar(_L + "self_attn.v_proj.weight", "ATTN_V"),
    GGUFVar(_L + "self_attn.o_proj.weight", "ATTN_OUT"),
    GGUFVar(_L + "self_attn.q_norm.weight", "ATTN_Q_NORM"),
    GGUFVar(_L + "self_attn.k_norm.weight", "ATTN_K_NORM"),
    GGUFVar(_L + "post_attention_layernorm.weight", "ATTN_POST_NORM"),
    GGUFVar(_L + "pre_feedforward_layernorm.weight", "FFN_PRE_NORM"),
    GGUFVar(_L + "mlp.gate_proj.weight", "FFN_GATE"),
    GGUFVar(_L + "mlp.up_proj.weight", "FFN_UP"),
    GGUFVar(_L + "mlp.down_proj.weight", "FFN_DOWN"),
    GGUFVar(_L + "post_feedforward_layernorm.weight", "FFN_POST_NORM"),
    GGUFVar(_L + "per_layer_input_gate.weight", "PER_LAYER_INP_GATE"),
    GGUFVar(_L + "per_layer_projection.weight", "PER_LAYER_PROJ"),
    GGUFVar(_L + "post_per_layer_input_norm.weight", "PER_LAYER_POST_NORM"),
    GGUFVar(_L + "altup.correction_coefs.weight", "ALTUP_CORRECT_COEF"),
    GGUFVar(_L + "altup.correct_output_scale", "ALTUP_CORRECT_SCALE"),
    GGUFVar(_L + "altup.prediction_coefs.weight", "ALTUP_PREDICT_COEF"),
    GGUFVar(_L + "altup.modality_router.weight", "ALTUP_ROUTER"),
    GGUFVar(_L + "altup.router_norm.weight", "ALTUP_ROUTER_NORM"),
    GGUFVar(_L + "laurel.linear_left.weight", "LAUREL_L"),
    GGUFVar(_L + "laurel.linear_right.weight", "LAUREL_R"),
    GGUFVar(_L + "laurel.post_laurel_norm.weight", "LAUREL_POST_NORM"),
    GGUFVar("model.norm.weight", "OUTPUT_NORM"),
    GGUFVar("lm_head.weight", "OUTPUT"),
)


@lru_cache(maxsize=None)
def _templates() -> tuple[tuple[GGUFVar, str], ...]:
    """(row, GGUF name template with {i}) from the gguf package's own table (imported on first use)."""
    from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

    known = set(MODEL_TENSORS[MODEL_ARCH.GEMMA3N])
    out = []
    for v in VARS:
        t = MODEL_TENSOR[v.member]
        assert t in known, f"{v.member} is not a gemma3n tensor in the installed gguf package"
        out.append((v, TENSOR_NAMES[t].replace("{bid}", "{i}") + ".weight"))
    return tuple(out)


def _hf_regex(template: str) -> re.Pattern[str]:
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d{1,6})").replace(r"\{k\}", r"(?P<k>\d{1,3})")
    return re.compile("^" + rx + "$")


def gguf_var(hf_name: str) -> tuple[GGUFVar, str, int | None] | None:
    """(row, GGUF name, AltUp index k or None) of an HF tensor name; None for a name that is no Gemma 3n weight."""
    for v, tmpl in _templates():
        m = _hf_regex(v.hf).match(hf_name)
        if m:
            i = int(m.group("i")) if "i" in m.groupdict() else None
            k = int(m.group("k")) if "k" in m.groupdict() else None
            return v, tmpl.format(i=i) if i is not None else tmpl, k
    return None


def hf_names_of(gguf_name: str, streams: int) -> tuple[GGUFVar, list[str]] | None:
    """(row, the HF names it holds) of a GGUF tensor name: one name, or the `streams - 1` projections of a stack."""
    for v, tmpl in _templates():
        m = _hf_regex(tmpl).match(gguf_name)
        if m:
            i = int(m.group("i")) if "i" in m.groupdict() else None
            if v.how == "stack":
                return v, [v.hf.format(k=k) for k in range(streams - 1)]
            return v, [v.hf.format(i=i) if i is not None else v.hf]
    return None


# ----------------------------------------------------------------------------- activation sparsity <-> quantiles
def sparsity_scale(p: float) -> float:
    """Phi^-1(p) as the converter stores it: the float32 nearest the quantile (what torch's Normal(0, 1).icdf gives
    for 0.95 today, 1.6448536; llama.cpp's graph hard-codes 1.6448533535, an older torch's, 2 ulps below); -inf for
    a dense layer (p = 0), as torch gives too."""
    if p <= 0:
        return -math.inf
    return float(np.float32(NormalDist().inv_cdf(p)))


def sparsity_of_scale(x: float, where: str) -> float:
    """The sparsity target p whose quantile is the stored float32 `x`: the shortest decimal p with Phi^-1(p) within
    4 float32 ulps of x (torch's float32 quantile and the float64 one differ by about 2 ulps); -inf -> 0.0."""
    if x == -math.inf:
        return 0.0
    if not math.isfinite(x):
        raise InputError(where, f"activation_sparsity_scale holds {x}; a sparsity target is a quantile in "
                                f"(-inf, +inf)")
    x32 = np.float32(x)
    tol = 4 * float(np.spacing(np.abs(x32)))
    p0 = NormalDist().cdf(float(x32))
    for digits in range(1, 10):
        p = float(f"{p0:.{digits}g}")
        if 0 < p < 1 and abs(NormalDist().inv_cdf(p) - float(x32)) <= tol:
            return p
    return float(f"{p0:.9g}")


# ----------------------------------------------------------------------------- metadata <-> HF text config
def _k(suffix: str) -> str:
    return suffix.format(arch=ARCH)


def hf_config(header: Any, path: str) -> tuple[dict[str, Any], list[str], set[str]]:
    """The HF `gemma3n_text` config a gemma3n GGUF stands for (what formats/hf.py builds the spec from), notes, and
    the config keys the file does not store (filled as llama.cpp fills them)."""
    import gguf

    from .gguf_header import Meta, decoder_basics

    K = gguf.Keys
    m, tensors, embed, n, hidden = decoder_basics(header, path, ARCH)
    md = header.metadata
    notes: list[str] = []
    assumed: set[str] = set()
    ffn = md.get(_k(K.LLM.FEED_FORWARD_LENGTH))
    if isinstance(ffn, np.ndarray):
        if ffn.size != n or ffn.dtype.kind not in "iu" or (ffn <= 0).any():
            raise InputError(path, f"metadata {_k(K.LLM.FEED_FORWARD_LENGTH)!r} must hold {n} positive integers")
        inter: Any = [int(x) for x in ffn]
    else:
        inter = m.integer(K.LLM.FEED_FORWARD_LENGTH)
    heads = m.integer(K.Attention.HEAD_COUNT)
    head_dim = m.integer(K.Attention.KEY_LENGTH)
    if m.integer(K.Attention.VALUE_LENGTH, head_dim) != head_dim:
        raise UnsupportedError(f"{path}: attention.value_length differs from key_length; Gemma 3n uses one head_dim")
    # the layout: one bool per layer (the converter's), a period, or llama.cpp's period of 5
    pat = md.get(_k(K.Attention.SLIDING_WINDOW_PATTERN))
    if isinstance(pat, np.ndarray) and pat.dtype == bool and pat.size == n:
        swa = [bool(s) for s in pat]
    elif isinstance(pat, int) and not isinstance(pat, bool) and pat > 0:
        swa = [i % pat < pat - 1 for i in range(n)]
    elif pat is None:
        swa = [i % LLAMA_CPP_SWA_PERIOD < LLAMA_CPP_SWA_PERIOD - 1 for i in range(n)]
        assumed.add("layer_types")
    else:
        raise InputError(path, f"metadata {_k(K.Attention.SLIDING_WINDOW_PATTERN)!r} must be {n} booleans or a "
                               f"positive integer")
    streams = m.integer(K.LLM.ALTUP_NUM_INPUTS, LLAMA_CPP_ALTUP)
    shared = md.get(_k(K.Attention.SHARED_KV_LAYERS))
    if shared is None:
        shared = max(n - LLAMA_CPP_KV_LAYERS, 0)
        assumed.add("num_kv_shared_layers")
        notes.append(f"attention.shared_kv_layers is absent: llama.cpp computes K/V on the first "
                     f"{LLAMA_CPP_KV_LAYERS} layers, so {shared} are read as shared")
    elif isinstance(shared, (float, np.floating)) and float(shared).is_integer() and 0 <= shared < n:
        shared = int(shared)  # gguf-py's first gemma3n writer stored it as a FLOAT32 (10.0 in the E2B files)
    else:
        shared = m.integer(K.Attention.SHARED_KV_LAYERS, positive=False)
    scale = md.get(_k(K.LLM.ACTIVATION_SPARSITY_SCALE))
    if scale is None:
        sparsity = [LLAMA_CPP_SPARSITY if i < LLAMA_CPP_SPARSE_LAYERS else 0.0 for i in range(n)]
        assumed.add("activation_sparsity")
        notes.append(f"activation_sparsity_scale is absent: llama.cpp's {LLAMA_CPP_SPARSITY} on the first "
                     f"{LLAMA_CPP_SPARSE_LAYERS} layers is used")
    else:
        if not isinstance(scale, np.ndarray) or scale.size != n or scale.dtype.kind != "f":
            raise InputError(path, f"metadata {_k(K.LLM.ACTIVATION_SPARSITY_SCALE)!r} must hold {n} floats")
        sparsity = [sparsity_of_scale(float(x), path) for x in scale]
    laurel = tensors.get("blk.0.laurel_l.weight")
    ple = tensors.get("per_layer_token_embd.weight")
    if ple is None:
        raise InputError(path, "no per_layer_token_embd.weight tensor (Gemma 3n's per-layer embeddings)")
    kept = md.get(PER_LAYER_VOCAB_KEY)
    if isinstance(kept, (int, np.integer)) and not isinstance(kept, bool) and 0 < kept <= ple.shape[0]:
        per_layer_vocab = int(kept)
    elif kept is not None:
        raise InputError(path, f"metadata {PER_LAYER_VOCAB_KEY!r} must be a positive integer no larger than "
                               f"per_layer_token_embd's {ple.shape[0]} rows, got {kept!r}")
    else:
        per_layer_vocab = HF_PER_LAYER_VOCAB if ple.shape[0] > HF_PER_LAYER_VOCAB else ple.shape[0]
        assumed.add("per_layer_vocab_size")
        notes.append(f"{PER_LAYER_VOCAB_KEY} is absent: the per-layer table is read as {per_layer_vocab:,} rows "
                     + (f"(the rest of its {ple.shape[0]:,} being llama.cpp's zero padding, transformers' default)"
                        if per_layer_vocab < ple.shape[0] else "(all it holds: no padding assumed)"))
    base = m.number(K.Rope.FREQ_BASE, None)
    if base is None:
        raise InputError(path, f"metadata {_k(K.Rope.FREQ_BASE)!r} is missing")
    local = m.number(K.Rope.FREQ_BASE_SWA, None)
    if local is None:
        local = LLAMA_CPP_SWA_BASE
        assumed.add("rope_local_theta")
    cap = m.number(K.LLM.FINAL_LOGIT_SOFTCAPPING, None)
    if cap is None:
        cap = LLAMA_CPP_FINAL_CAP
        assumed.add("final_logit_softcap")
    tok = Meta(header, path, ARCH)
    hf: dict[str, Any] = {
        "architectures": ["Gemma3nForCausalLM"], "model_type": "gemma3n_text",
        "vocab_size": embed.shape[0], "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": n,
        "num_attention_heads": heads, "num_key_value_heads": m.integer(K.Attention.HEAD_COUNT_KV, heads),
        "head_dim": head_dim, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": m.integer(K.LLM.CONTEXT_LENGTH),
        "rms_norm_eps": m.number(K.Attention.LAYERNORM_RMS_EPS),
        "sliding_window": m.integer(K.Attention.SLIDING_WINDOW),
        "layer_types": ["sliding_attention" if s else "full_attention" for s in swa],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": base},
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "final_logit_softcapping": cap,
        "vocab_size_per_layer_input": per_layer_vocab,
        "hidden_size_per_layer_input": m.integer(K.LLM.EMBD_LENGTH_PER_LAYER_INP),
        "altup_num_inputs": streams,
        "altup_active_idx": m.integer(K.LLM.ALTUP_ACTIVE_IDX, 0, positive=False),
        "altup_correct_scale": "blk.0.altup_correct_scale.weight" in tensors,
        "laurel_rank": laurel.shape[0] if laurel is not None else 0,
        "num_kv_shared_layers": shared,
        "activation_sparsity_pattern": sparsity,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": tok.integer(K.Tokenizer.BOS_ID, 2, positive=False),
        "eos_token_id": tok.integer(K.Tokenizer.EOS_ID, 1, positive=False),
        "pad_token_id": tok.integer(K.Tokenizer.PAD_ID, 0, positive=False),
    }
    if hf["rms_norm_eps"] is None:
        raise InputError(path, f"metadata {_k(K.Attention.LAYERNORM_RMS_EPS)!r} is missing")
    if "blk.0.laurel_l.weight" not in tensors:
        raise InputError(path, "no blk.0.laurel_l.weight tensor (Gemma 3n's LAuReL)")
    return hf, notes, assumed


# ----------------------------------------------------------------------------- reading
def _float_ref(path: str, name: str, info: Any, shape: tuple[int, ...], row_slice: tuple[int, int] | None,
               first: int | None) -> Any:
    """A TensorRef of (part of) a stored tensor: its first `first` rows (a padded table), or the `row_slice`
    (start, count) of outer index (a stack's k-th matrix)."""
    from ..checkpoint import TensorRef
    from .gguf import QuantizedTensorRef
    from .gguf_header import FLOAT_TYPES, dequantize, load_float

    origin = f"{path}:{info.name}" + (f"[{row_slice[0]}]" if row_slice else "")
    outer = info.shape[0]
    per_outer = info.nbytes // outer if outer else 0

    def pick(arr: np.ndarray) -> np.ndarray:
        if row_slice is not None:
            return arr[row_slice[0]]
        return arr[:first] if first is not None else arr

    if info.type_name in FLOAT_TYPES:
        if row_slice is not None:
            start, nbytes = info.start + row_slice[0] * per_outer, per_outer
        else:
            start, nbytes = info.start, (first * per_outer if first is not None else info.nbytes)
        return TensorRef(name=name, shape=shape, dtype=FLOAT_TYPES[info.type_name], nbytes=nbytes, origin=origin,
                         loader=lambda: np.ascontiguousarray(pick(load_float(path, info))),
                         span=(path, start, nbytes))
    nbytes = per_outer if row_slice is not None else (first * per_outer if first is not None else info.nbytes)
    return QuantizedTensorRef(name=name, shape=shape, dtype=info.type_name, nbytes=nbytes, origin=origin,
                              loader=lambda: np.ascontiguousarray(pick(dequantize(path, info))))


def read(path: str, header: Any) -> Any:
    """A gemma3n GGUF -> Checkpoint (HF names and layouts; the stacks taken apart, the padding cut off)."""
    import gguf

    from ..checkpoint import Checkpoint, check_against_spec, expected_tensors, parse_canonical
    from . import hf as hf_format
    from ..roles import group_of
    from .gguf import QUANT_GROUPS, _declared_dtype, quantization_stats
    from .gguf_header import NON_WEIGHT_TYPES, file_type_and_config
    from .gguf_vocab import embedded_tokenizer

    cfg, notes, assumed_keys = hf_config(header, path)
    cfg["dtype"] = _declared_dtype(header.tensors)
    spec, more = hf_format.spec_from_config(cfg, path, cfg["dtype"])
    notes += more
    tensors: dict[str, Any] = {}
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    stored: dict[str, Any] = {}
    unused = _unused_kv(spec)
    ignored_kv: dict[str, tuple[tuple[int, ...], str]] = {}
    for info in header.tensors:
        found = hf_names_of(info.name, spec.altup_num_inputs or LLAMA_CPP_ALTUP)
        if found is None:
            ignored[info.name] = (info.shape, info.type_name)
            continue
        if info.type_name in NON_WEIGHT_TYPES:
            raise InputError(path, f"tensor {info.name!r} is stored as {info.type_name}; Gemma weights are floating "
                                   f"point or quantized")
        v, names = found
        if names[0] in unused:  # k/v/k_norm of a KV-shared layer, which reads an earlier layer's keys and values
            ignored_kv[info.name] = (info.shape, info.type_name)
            continue
        if v.how == "stack":
            if len(info.shape) != 3 or info.shape[0] != len(names):
                raise InputError(path, f"{info.name} has shape {list(info.shape)}, expected {len(names)} stacked "
                                       f"[hidden, hidden] matrices (altup.num_inputs - 1)")
            for k, name in enumerate(names):
                tensors[name] = _float_ref(path, name, info, tuple(info.shape[1:]), (k, 1), None)
                stored[name] = (info, len(names))
            continue
        name = names[0]
        first = None
        if v.how == "pad" and len(info.shape) == 2:
            rows = spec.per_layer_vocab_size if name == "model.embed_tokens_per_layer.weight" else spec.vocab_size
            if info.shape[0] < rows:
                raise InputError(path, f"{info.name} has {info.shape[0]} rows, fewer than the {rows} it holds")
            first = rows if rows < info.shape[0] else None
        shape = (first,) + tuple(info.shape[1:]) if first is not None else tuple(info.shape)
        tensors[name] = _float_ref(path, name, info, shape, None, first)
        stored[name] = (info, 1)
    if ignored_kv:
        layers = sorted({int(n.split(".")[1]) for n in ignored_kv})
        notes.append(f"{len(ignored_kv)} k/v/k_norm tensors of the KV-shared layers {layers[0]}-{layers[-1]} set "
                     f"aside: "
                     f"llama.cpp's loader requires them on every layer, and those layers reuse an earlier layer's keys "
                     f"and values")
    if ignored:
        shown = ", ".join(list(ignored)[:3]) + (f" (and {len(ignored) - 3} more)" if len(ignored) > 3 else "")
        notes.append(f"{len(ignored)} tensors that are not Gemma decoder weights were ignored: {shown}")
    check_against_spec(spec, tensors, path, path)
    ordered = {n: tensors[n] for n in expected_tensors(spec)}
    tokenizer = embedded_tokenizer(header, path, spec, notes)
    file_type_name, config = file_type_and_config(header)
    # each tensor counted under its role's group (gguf.py's table names a representative role per group), with its
    # share of the stored bytes (a stack's member, a padded table without its padding)
    rep = {g: min(roles) for g, roles in QUANT_GROUPS if roles}
    quantization = quantization_stats(
        [(rep.get(group_of(parse_canonical(n)[0]), "other"), stored[n][0].type_name,  # type: ignore[index]
          ordered[n].numel, stored[n][0].nbytes * ordered[n].numel // stored[n][0].numel) for n in ordered],
        file_type_name)
    field_of = {"layer_types": "layer_types", "num_kv_shared_layers": "num_kv_shared_layers",
                "activation_sparsity": "activation_sparsity", "per_layer_vocab_size": "per_layer_vocab_size",
                "rope_local_theta": "rope_local_theta", "final_logit_softcap": "final_logit_softcap"}
    assumed = {field_of[k] for k in assumed_keys} | {f for f, key in (
        ("bos_token_id", gguf.Keys.Tokenizer.BOS_ID), ("eos_token_id", gguf.Keys.Tokenizer.EOS_ID),
        ("pad_token_id", gguf.Keys.Tokenizer.PAD_ID)) if key not in header.metadata}
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gguf", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=config, files=[path], assumed=frozenset(assumed),
                      quantization=quantization)


def _unused_kv(spec: Any) -> dict[str, tuple[tuple[int, ...], float]]:
    """HF name -> (shape, fill value) of the k/v/k_norm a KV-shared layer never reads (keras_gemma3n.unused_kv)."""
    from .keras_gemma3n import unused_kv

    return unused_kv({"num_hidden_layers": spec.num_layers, "num_kv_shared_layers": spec.num_kv_shared_layers,
                      "num_key_value_heads": spec.num_key_value_heads, "head_dim": spec.head_dim,
                      "hidden_size": spec.hidden_size})


# ----------------------------------------------------------------------------- writing
def gguf_problems(spec: Any) -> list[str]:
    """What llama.cpp's gemma3n would run differently from this spec (it hard-codes these): empty when it runs it
    as transformers does."""
    problems = []
    n = spec.num_layers
    if spec.altup_num_inputs != LLAMA_CPP_ALTUP:
        problems.append(f"{spec.altup_num_inputs} AltUp streams: llama.cpp's gemma3n runs {LLAMA_CPP_ALTUP}")
    kv_layers = n - spec.num_kv_shared_layers
    if kv_layers != LLAMA_CPP_KV_LAYERS:
        problems.append(f"{kv_layers} layers computing K/V ({spec.num_kv_shared_layers} KV-shared of {n}): "
                        f"llama.cpp's gemma3n computes K/V on the first {LLAMA_CPP_KV_LAYERS} layers whatever the file "
                        f"says")
    hard = tuple(LLAMA_CPP_SPARSITY if i < LLAMA_CPP_SPARSE_LAYERS else 0.0 for i in range(n))
    if tuple(spec.layer_sparsity(i) for i in range(n)) != hard:
        problems.append(f"activation sparsity {[spec.layer_sparsity(i) for i in range(n)]}: llama.cpp's gemma3n "
                        f"applies {LLAMA_CPP_SPARSITY} on the first {LLAMA_CPP_SPARSE_LAYERS} layers whatever the file "
                        f"says")
    if spec.per_layer_input_size != LLAMA_CPP_PER_LAYER_INPUT:
        problems.append(f"per-layer inputs {spec.per_layer_input_size} wide: llama.cpp's gemma3n reads "
                        f"{LLAMA_CPP_PER_LAYER_INPUT} whatever embedding_length_per_layer_input says")
    if spec.laurel_rank != LLAMA_CPP_LAUREL_RANK:
        problems.append(f"LAuReL rank {spec.laurel_rank}: llama.cpp's gemma3n requires {LLAMA_CPP_LAUREL_RANK}")
    if spec.final_logit_softcap is None:
        problems.append(f"no final soft cap: llama.cpp's gemma3n always caps ({LLAMA_CPP_FINAL_CAP:g} when unset)")
    if not spec.altup_correct_scale:
        problems.append("no AltUp correct_output_scale: llama.cpp's gemma3n requires one")
    if spec.activation != "gelu_tanh":
        problems.append(f"activation {spec.activation}: llama.cpp's gemma3n runs the tanh GELU")
    return problems


def _plan(name: str, shape: tuple[int, ...], dtype: str, make: Callable[[], np.ndarray], one_d_f32: bool,
          want: str, notes: set[str]) -> _Planned:
    """The stored type of one GGUF tensor: float32 for vectors (as the converter keeps them), else the source's
    float type (keep) or the one asked for; q8_0 where the rows are whole blocks."""
    import gguf

    from ..tensorio import cast_array
    from .gguf import _quantize
    from .gguf_header import GGML_OF_FLOAT

    Q = gguf.GGMLQuantizationType
    numel = math.prod(shape)

    def nbytes(qtype: Any) -> int:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return numel // block * size

    if one_d_f32:
        return _Planned(name, shape, Q.F32, nbytes(Q.F32), lambda: make().astype(np.float32))
    target = dtype if want == "keep" else want
    if target in GGML_OF_FLOAT:
        qtype = Q[GGML_OF_FLOAT[target]]
        return _Planned(name, shape, qtype, nbytes(qtype), lambda: cast_array(make(), target))
    if target == "q8_0":
        block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
        if shape[-1] % block:
            notes.add(f"tensors with rows not a multiple of {block} values stay float16 (Q8_0 needs whole blocks)")
            return _Planned(name, shape, Q.F16, nbytes(Q.F16), lambda: cast_array(make(), "float16"))
        return _Planned(name, shape, Q.Q8_0, nbytes(Q.Q8_0), lambda: _quantize(make(), Q.Q8_0))
    if want == "keep":  # a quantized source: its dequantized values, exactly, in float32
        notes.add(f"{dtype} tensors are written as float32 (their dequantized values)")
        return _Planned(name, shape, Q.F32, nbytes(Q.F32), lambda: make().astype(np.float32))
    raise UnsupportedError(f"--dtype {want} is not supported for GGUF")


def plan(ckpt: Any, options: Any, notes: set[str]) -> list[_Planned]:
    """Every GGUF tensor `write` writes, in the checkpoint's order (a stack where its first member comes)."""
    spec = ckpt.spec
    plans: list[_Planned] = []
    stacks: dict[str, list[str]] = {}
    tensors = dict(ckpt.tensors)
    missing = {n: v for n, v in _unused_kv(spec).items() if n not in tensors}
    if missing:  # llama.cpp's loader requires k/v/k_norm on every layer
        from .keras_gemma3n import filler

        dtype = next(iter(tensors.values())).dtype
        tensors.update({n: filler(n, shape, value, dtype) for n, (shape, value) in missing.items()})
        notes.add(f"llama.cpp's loader requires attn_k, attn_v and attn_k_norm on every layer: those of the KV-shared "
                  f"layers, which read an earlier layer's keys and values, are written as zeros (k_norm ones) "
                  f"({len(missing)} tensors)")
    for name in tensors:
        found = gguf_var(name)
        if found is None:
            raise UnsupportedError(f"tensor {name} has no GGUF name in llama.cpp's gemma3n")
        v, gname, k = found
        if v.how == "stack":
            stacks.setdefault(gname, []).append(name)
    done: set[str] = set()
    for name, ref in tensors.items():
        v, gname, k = gguf_var(name)  # type: ignore[misc]
        if gname in done:
            continue
        done.add(gname)
        if v.how == "stack":
            members = [v.hf.format(k=j) for j in range(len(stacks[gname]))]
            if sorted(members) != sorted(stacks[gname]):
                raise UnsupportedError(f"{gname}: the AltUp projections {sorted(stacks[gname])} are not 0..n-2")
            refs = [tensors[m] for m in members]
            shape = (len(refs),) + tuple(refs[0].shape)

            def make(refs: list[Any] = refs) -> np.ndarray:
                return np.stack([r.load() for r in refs])
        elif v.how == "pad" and ref.shape[0] < spec.vocab_size:
            shape = (spec.vocab_size,) + tuple(ref.shape[1:])

            def make(ref: Any = ref, rows: int = spec.vocab_size) -> np.ndarray:
                arr = ref.load()
                out = np.zeros((rows,) + arr.shape[1:], dtype=arr.dtype)
                out[:arr.shape[0]] = arr
                return out
        else:
            shape = tuple(ref.shape)

            def make(ref: Any = ref) -> np.ndarray:
                return ref.load()
        dtype = ref.dtype
        plans.append(_plan(gname, shape, dtype, make, len(shape) == 1, options.dtype, notes))
    return plans


def write(ckpt: Any, dest: str, options: Any, progress: Callable[[int], None]) -> None:
    """Write a Gemma 3n checkpoint as one `gemma3n` GGUF file: llama.cpp's converter's names, keys and layouts
    (norms as they are, AltUp projections stacked, embeddings padded to vocab_size rows, sparsity as quantiles),
    plus the per-layer table's own vocabulary size under a key of ours."""
    import gguf

    from .gguf import _file_type
    from .gguf_vocab import add_tokenizer

    spec = ckpt.spec
    refuse_unless_forced(gguf_problems(spec), options)
    plan_notes: set[str] = set()
    plans = plan(ckpt, options, plan_notes)
    options.notes.extend(sorted(plan_notes))
    n = spec.num_layers
    w = gguf.GGUFWriter(path=None, arch=ARCH)
    w.add_name(spec.name or os.path.basename(os.path.normpath(ckpt.source)))
    w.add_vocab_size(spec.vocab_size)
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(n)
    widths = [spec.layer_intermediate(i) for i in range(n)]
    w.add_feed_forward_length(widths)  # the converter writes the config's list as it is
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_rope_freq_base_swa(spec.local_rope_theta)  # llama.cpp reads it when present (older builds: 10,000)
    w.add_sliding_window(spec.sliding_window)
    if spec.final_logit_softcap is not None:
        w.add_final_logit_softcapping(spec.final_logit_softcap)
    w.add_altup_active_idx(spec.altup_active_idx)
    w.add_altup_num_inputs(spec.altup_num_inputs)
    w.add_embedding_length_per_layer_input(spec.per_layer_input_size)
    w.add_shared_kv_layers(spec.num_kv_shared_layers)
    w.add_activation_sparsity_scale([sparsity_scale(spec.layer_sparsity(i)) for i in range(n)])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in spec.layer_types])
    w.add_uint32(PER_LAYER_VOCAB_KEY, spec.per_layer_vocab_size)
    w.add_file_type(_file_type(plans, ckpt, options))  # type: ignore[arg-type]
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, ckpt, options.notes)
    write_file(w, plans, dest, progress)


def planned_nbytes(ckpt: Any, options: Any) -> int:
    return sum(p.nbytes for p in plan(ckpt, options, set()))


__all__ = ["VARS", "GGUFVar", "gguf_var", "hf_names_of", "sparsity_scale", "sparsity_of_scale", "hf_config", "read",
           "write", "plan", "planned_nbytes", "gguf_problems", "PER_LAYER_VOCAB_KEY"]
