"""The config lint: `lint:<rule>` records from a checkpoint's config, tokenizer and tensors, with no forward pass
and no torch (so `summary` runs it too).

A rule that applies to the checkpoint and finds nothing reports `pass` (so CI logs show what was looked at); a
rule that does not apply to the family or format is left out; one that applies but lacks what it needs (e.g. no
tokenizer) reports `skip`. The rules are a registry (`LINT_RULES`, by name): the ones here need only the
family row and the spec; a format's own rules live next to it (formats/hf_lint.py) and are registered here.
What a rule expects comes from the family row (families.py) or, for what depends on the size, the published
card of the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .families import family
from .findings import READS, LintRule, Record, check, lint_rule, published_card
from .formats.hf_lint import lint_rules as hf_lint_rules

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoint

NEAR_ONE = 0.25  # a norm weight whose mean is within this of 1 looks like it holds the (1 + w) offset
LM_HEAD = "lm_head.weight"

LINT_RULES: dict[str, LintRule] = {}


def register(rules: Iterable[LintRule]) -> None:
    """Add rules to the registry (a name registered twice is a programming error)."""
    for rule in rules:
        assert rule.name not in LINT_RULES, rule.name
        LINT_RULES[rule.name] = rule


def lint(ckpt: "Checkpoint", reads: tuple[str, ...] = READS) -> list[Record]:
    """The records of every registered rule that applies to `ckpt`, in the rules' order, among the rules that
    read only what `reads` allows (`summary` runs the "config" ones: headers and config, no tokenizer, no
    values)."""
    out: list[Record] = []
    for rule in sorted(LINT_RULES.values(), key=lambda r: r.order):
        if not rule.applies_to(ckpt) or rule.reads not in reads:
            continue
        found = rule(ckpt)
        if found is not None:
            out.append(found)
    return out


# ----------------------------------------------------------------------------- the output projection
def stored_lm_head(ckpt: "Checkpoint") -> tuple[float, str] | None:
    """A separate output matrix stored in the checkpoint, used by the runtimes or not (the HF reader keeps the
    one it sets aside under tie_word_embeddings in `lm_head_set_aside`): (max |W - E| against the embedding,
    where); inf when the shapes differ."""
    import numpy as np

    ref = ckpt.tensors.get(LM_HEAD) or ckpt.lm_head_set_aside
    if ref is None:
        return None
    head = np.asarray(ref.load(), dtype=np.float32)
    emb = np.asarray(ckpt.tensor("embed").load(), dtype=np.float32)
    return (float(np.abs(head - emb).max()) if head.shape == emb.shape else float("inf")), ref.origin or LM_HEAD


@lint_rule("tied_lm_head", 30, reads="values")
def tied_lm_head(ckpt: "Checkpoint") -> Record | None:
    if not ckpt.spec.is_gemma or "model.embed_tokens.weight" not in ckpt.tensors:
        return None
    tie = ckpt.spec.tied_embeddings
    flag = "tied" if tie else "untied"
    stored = stored_lm_head(ckpt)
    if stored is None:
        return check("lint:tied_lm_head", "pass", "tied, no lm_head.weight", f"{flag}, no lm_head.weight",
                     "the output projection is the embedding")
    diff, where = stored
    observed = f"{flag}, lm_head.weight {'equal to' if diff == 0 else 'different from'} the embedding"
    if tie and diff:
        return check("lint:tied_lm_head", "fail", "tied, no lm_head.weight", observed,
                     f"{where} differs from the embedding (max |W - E| = {diff:.3g}) but the config ties them "
                     f"(tie_word_embeddings): "
                     f"which matrix the logits use depends on the runtime (transformers 5 uses the stored one, "
                     f"this tool's readers the embedding)")
    if tie:
        return check("lint:tied_lm_head", "pass", "tied, no lm_head.weight", observed,
                     f"{where} is a redundant copy of the embedding")
    if diff == 0:
        return check("lint:tied_lm_head", "warn", "tied, no lm_head.weight", observed,
                     f"{flag} with an output matrix identical to the embedding: "
                     f"{ckpt.tensor('embed').numel:,} redundant parameters (Gemma ties them)")
    return check("lint:tied_lm_head", "warn", "tied, no lm_head.weight", observed,
                 f"an untied output matrix (max |W - E| = {diff:.3g}): Gemma ties its output to the embedding")


# ----------------------------------------------------------------------------- stored values
@lint_rule("norm_weights", 40, reads="values")
def norm_weights(ckpt: "Checkpoint") -> Record | None:
    if not ckpt.spec.is_gemma:
        return None
    if ckpt.spec.norm_offset == 0:
        return _norm_weights_without_offset(ckpt)
    if ckpt.spec.norm_offset != 1:
        return None
    means = _norm_means(ckpt)
    if not means:
        return None
    lo, hi = min(means), max(means)
    near_one = sum(abs(m - 1) <= NEAR_ONE for m in means)
    near_minus = sum(abs(m + 1) <= NEAR_ONE for m in means)
    observed = f"means {lo:.3f}..{hi:.3f} over {len(means)} norm weights"
    expected = "stored without the +1 (the layer adds 1)"
    if near_one == len(means):
        return check("lint:norm_weights", "fail", expected, observed,
                     "every norm weight has a mean near 1: the (1 + w) offset is baked into the stored weights "
                     "and the layer adds 1 again (typical of a GGUF import that did not subtract 1)")
    if near_minus == len(means):
        return check("lint:norm_weights", "fail", expected, observed,
                     "every norm weight has a mean near -1: the offset was subtracted twice (stored as w - 1)")
    if near_one > len(means) / 2:
        return check("lint:norm_weights", "warn", expected, observed,
                     f"{near_one} of {len(means)} norm weights have a mean near 1: possibly (1 + w) stored")
    return check("lint:norm_weights", "pass", expected, observed,
                 f"{near_one} of {len(means)} means near 1 (within {NEAR_ONE:g}): trained norm weights spread "
                 f"widely and some land near 1 by chance; a baked-in +1 moves all or most of them there")


def _norm_means(ckpt: "Checkpoint") -> list[float]:
    import numpy as np

    from .checkpoint import NORM_ROLES, parse_canonical

    means = []
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed and parsed[0] in NORM_ROLES:
            means.append(float(np.asarray(ref.load(), dtype=np.float64).mean()))
    return means


def _norm_weights_without_offset(ckpt: "Checkpoint") -> Record | None:
    """A family whose norms apply w itself (Gemma 3n, Gemma 4: weights around 1): every mean near 2 is w + 1 stored,
    the offset of Gemma 1-3 added by a converter that treated the file as one of theirs."""
    means = _norm_means(ckpt)
    if not means:
        return None
    lo, hi = min(means), max(means)
    near_two = sum(abs(m - 2) <= NEAR_ONE for m in means)
    observed = f"means {lo:.3f}..{hi:.3f} over {len(means)} norm weights"
    expected = "stored as applied (the layer applies w, no +1)"
    if near_two == len(means):
        return check("lint:norm_weights", "fail", expected, observed,
                     "every norm weight has a mean near 2: a +1 was added to weights the layer applies as they are "
                     "(Gemma 1-3's (1 + w) convention written into a family that has none)")
    return check("lint:norm_weights", "pass", expected, observed,
                 f"{near_two} of {len(means)} means near 2 (within {NEAR_ONE:g}): no +1 baked in")


def _trained(ckpt: "Checkpoint") -> bool:
    """Whether the norm weights moved from their initial value (ones in the families without the +1 offset)."""
    return any(abs(m - 1) > 1e-6 for m in _norm_means(ckpt))


@lint_rule("layer_scalar", 42, reads="values")
def layer_scalar(ckpt: "Checkpoint") -> Record | None:
    """Gemma 4's stored per-layer output scales: released values lie far from 1 (about 0.005-0.92), and transformers
    initialises the buffer to 1, so a file without them, or with all of them 1, runs a different model - visibly
    only on trained weights (a freshly initialised model has ones everywhere)."""
    import numpy as np

    if not family(ckpt.spec.family).defaults.get("layer_scalar"):
        return None
    expected = "one stored scalar per layer, trained (not 1)"
    trained = _trained(ckpt)
    status = "fail" if trained else "warn"
    why = ("the norm weights are trained, so these were dropped or reset by a converter" if trained else
           "the norm weights are at their initial ones too (an untrained model)")
    if not ckpt.spec.layer_scalar:
        return check("lint:layer_scalar", status, expected, "none stored",
                     f"no layer_scalar in the file: every runtime runs each layer with scalar 1; {why}")
    values = [float(np.asarray(ref.load(), dtype=np.float64).reshape(-1)[0]) for name, ref in ckpt.tensors.items()
              if name.endswith(".layer_scalar")]
    observed = f"{len(values)} stored, {min(values):.4g}..{max(values):.4g}"
    if all(v == 1.0 for v in values):
        return check("lint:layer_scalar", status, expected, observed, f"every layer_scalar is exactly 1; {why}")
    return check("lint:layer_scalar", "pass", expected, observed,
                 f"{sum(v != 1.0 for v in values)} of {len(values)} layer scalars differ from 1")


@lint_rule("global_geometry", 44, formats=("hf",))
def global_geometry(ckpt: "Checkpoint") -> Record | None:
    """How config.json spells the full layers' head geometry: transformers 5.24 saves per_layer_config only, which
    llama.cpp's converter and keras-hub do not read (they read global_head_dim / num_global_key_value_heads)."""
    from .formats.hf_lint import text_config

    row = family(ckpt.spec.family)
    if row.hf is None or not row.hf.layer_geometry:
        return None
    text = text_config(ckpt)
    keys = [k for k in ("global_head_dim", "num_global_key_value_heads") if k in text]
    per_layer = "per_layer_config" in text
    expected = "global_head_dim (and num_global_key_value_heads where it differs)"
    observed = ", ".join(keys + (["per_layer_config"] if per_layer else [])) or "neither"
    if per_layer and not keys and ckpt.spec.per_layer_geometry:
        return check("lint:global_geometry", "warn", expected, observed,
                     "the full layers' head geometry is only in per_layer_config (as transformers 5.24 saves it): "
                     "transformers reads it, but llama.cpp's converter and keras-hub read global_head_dim / "
                     "num_global_key_value_heads and fall back to their defaults")
    return check("lint:global_geometry", "pass", expected, observed,
                 "the global geometry is spelled with the keys every reader knows" if keys else
                 "every layer has one geometry")


@lint_rule("unused_kv", 46)
def unused_kv(ckpt: "Checkpoint") -> Record | None:
    """Information: k/v tensors stored for KV-shared layers (Google's original files) are read by no runtime."""
    from .checkpoint import parse_canonical

    n = ckpt.spec.num_kv_shared_layers
    if not n:
        return None
    unused = [name for name in ckpt.ignored if (parse_canonical(name) or ("", None))[0] in ("k", "v", "k_norm")]
    observed = f"{len(unused)} unused k/v tensors" if unused else "none"
    evidence = (f"the file stores {len(unused)} k/v tensors for the {n} KV-shared layers, which attend with an "
                f"earlier layer's K/V: no runtime reads them (set aside)" if unused else
                f"the {n} KV-shared layers store no k/v tensors")
    return check("lint:unused_kv", "pass", "none needed", observed, evidence)


@lint_rule("nonfinite", 120, reads="values")
def nonfinite(ckpt: "Checkpoint") -> Record | None:
    """NaN or infinite weights: the file is fine, the model is not (every logit downstream becomes NaN)."""
    from .scan import describe, nonfinite as find_nonfinite

    if ckpt.is_card:
        return None
    found = find_nonfinite(ckpt)
    if not found:
        return check("lint:nonfinite", "pass", "finite weights", "finite weights",
                     f"all {len(ckpt.tensors)} tensors read: no NaN or infinite values")
    observed = {f["name"]: {"nan": f["nan"], "inf": f["inf"]} for f in found}
    return check("lint:nonfinite", "fail", "finite weights", observed, describe(found, ckpt.source))


# ----------------------------------------------------------------------------- the family's rules
@lint_rule("softcaps", 50)
def softcaps(ckpt: "Checkpoint") -> Record | None:
    spec = ckpt.spec
    row = family(spec.family)
    rules = row.rules
    if rules.attention_logit_softcap is None and rules.final_logit_softcap is None:
        return None
    expected = {"attention": rules.attention_logit_softcap, "final": rules.final_logit_softcap}
    observed = {"attention": spec.attention_logit_softcap, "final": spec.final_logit_softcap}
    assumed = [f for f in ("attention_logit_softcap", "final_logit_softcap") if f in ckpt.assumed]
    if assumed:
        return check("lint:softcaps", "skip", expected, observed, f"{', '.join(assumed)} not stored in this format")
    shown = lambda v: "none" if v is None else f"{v:g}"  # noqa: E731
    wrong = [f"{k} cap {('missing' if observed[k] is None else f'{observed[k]:g}')}" for k in expected
             if observed[k] != expected[k]]
    if wrong:
        return check("lint:softcaps", "fail", expected, observed,
                     f"{'; '.join(wrong)}: {row.title} caps attention logits at {shown(expected['attention'])} "
                     f"and final logits at {shown(expected['final'])} "
                     f"(attn_logit_softcapping / final_logit_softcapping); without them outputs differ")
    return check("lint:softcaps", "pass", expected, observed,
                 f"attention {shown(expected['attention'])}, final {shown(expected['final'])}")


@lint_rule("query_pre_attn_scalar", 60)
def query_pre_attn_scalar(ckpt: "Checkpoint") -> Record | None:
    spec = ckpt.spec
    row = family(spec.family)
    if not row.gemma or row.rules.query_scalar != "query_pre_attn_scalar":
        return None
    declared = spec.query_pre_attn_scalar
    if "query_pre_attn_scalar" in ckpt.assumed:
        return check("lint:query_pre_attn_scalar", "skip", None, declared,
                     "not stored in this format; the reader inferred it")
    c = published_card(spec)
    if c is not None:
        ok = declared == c.query_pre_attn_scalar
        return check("lint:query_pre_attn_scalar", "pass" if ok else "fail", c.query_pre_attn_scalar, declared,
                     f"the published {c.name} has this shape and query_pre_attn_scalar {c.query_pre_attn_scalar:g}"
                     + ("" if ok else f"; this config says {declared:g}, so every attention score is scaled wrong"))
    usual = {float(spec.head_dim), spec.hidden_size / spec.num_attention_heads}
    ok = float(declared) in usual
    return check("lint:query_pre_attn_scalar", "pass" if ok else "warn", sorted(usual), declared,
                 "no published card of this shape; Gemma uses head_dim or hidden_size / heads"
                 + ("" if ok else f", not {declared:g}"))


@lint_rule("rope_scaling", 70)
def rope_scaling(ckpt: "Checkpoint") -> Record | None:
    spec = ckpt.spec
    rule = family(spec.family).rules.rope_scaling_from
    if rule is None:
        return None
    from_size, factor, who = rule
    c = published_card(spec)
    if c is not None:
        want, why = c.rope_scaling_factor, f"the published {c.name}"
    elif spec.hidden_size >= from_size:
        want, why = factor, f"{who} (hidden size >= {from_size})"
    else:
        return check("lint:rope_scaling", "pass", "no published card of this shape", spec.rope_scaling_factor,
                     f"no published card of this shape; global RoPE scaled x{spec.rope_scaling_factor:g}")
    ok = spec.rope_scaling_factor == want
    return check("lint:rope_scaling", "pass" if ok else "fail", want, spec.rope_scaling_factor,
                 f"{why} scales global-layer RoPE linearly by {want:g}" +
                 ("" if ok else f"; this config says {spec.rope_scaling_factor:g} (long contexts degrade)"))


@lint_rule("float16", 110)
def float16(ckpt: "Checkpoint") -> Record | None:
    spec = ckpt.spec
    if not family(spec.family).rules.float16_overflows:
        return None
    if spec.dtype == "float16":
        return check("lint:float16", "warn", "bfloat16 or float32", "float16",
                     f"{spec.title} activations overflow float16 (inf/NaN in the residual stream): run it in "
                     f"bfloat16 or float32")
    return check("lint:float16", "pass", "bfloat16 or float32", spec.dtype, f"declared dtype {spec.dtype}")


# ----------------------------------------------------------------------------- the tokenizer
@lint_rule("vocab_size", 80, reads="tokenizer")
def vocab_size(ckpt: "Checkpoint") -> Record | None:
    if ckpt.tokenizer is None:
        return check("lint:vocab_size", "skip", None, ckpt.spec.vocab_size, "no tokenizer")
    tv, rows = ckpt.tokenizer.vocab_size, ckpt.spec.vocab_size
    if rows < tv:
        return check("lint:vocab_size", "fail", f">= {tv}", rows,
                     f"{rows} embedding rows for a tokenizer of {tv} tokens: ids {rows}..{tv - 1} have no row")
    return check("lint:vocab_size", "pass", f">= {tv}", rows, f"{rows} embedding rows, tokenizer {tv} tokens")


@lint_rule("special_ids", 90, reads="tokenizer")
def special_ids(ckpt: "Checkpoint") -> Record | None:
    if ckpt.tokenizer is None:
        return check("lint:special_ids", "skip", None, None, "no tokenizer")
    spec = ckpt.spec
    fields = {"bos_token_id": "<bos>", "eos_token_id": "<eos>", "pad_token_id": "<pad>"}
    expected, observed, bad = {}, {}, []
    for f, piece in fields.items():
        if f in ckpt.assumed:
            continue
        want = ckpt.tokenizer.token_to_id(piece)
        expected[f], observed[f] = want, getattr(spec, f)
        if want is not None and want != getattr(spec, f):
            bad.append(f"{f} = {getattr(spec, f)} but the vocabulary has {piece} at {want}")
    if not expected:
        return check("lint:special_ids", "skip", None, None, "this format does not store the special ids")
    if bad:
        return check("lint:special_ids", "fail", expected, observed, "; ".join(bad))
    return check("lint:special_ids", "pass", expected, observed, "the config's ids are the vocabulary's")


register([tied_lm_head, norm_weights, softcaps, query_pre_attn_scalar, rope_scaling, vocab_size, special_ids,
          float16, layer_scalar, global_geometry, unused_kv, nonfinite])
register(hf_lint_rules)

__all__ = ["lint", "register", "LINT_RULES", "stored_lm_head", "NEAR_ONE"]
