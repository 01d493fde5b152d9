"""Round two, configs: values that parse but break what comes after.

- Integers of thousands of digits (Python refuses to parse past 4,300; smaller ones cannot be printed sensibly),
  NaN/Infinity (not JSON; written back they make invalid JSON), values nested hundreds deep (repr() of them in an
  error message exhausted the recursion limit): each refused with one short line naming config.json.
- Keys transformers acts on as it loads the model and the readers do not follow - quantization_config, an
  attn_implementation other than eager/sdpa, at the top or in a text_config - and bos/eos/pad ids outside the
  vocabulary (transformers' embedding asserts on padding_idx): refused before any runtime loads.
- A large sliding_window: the default sequence of verify and parity is bounded; a forward pass whose memory
  estimate exceeds what is available is refused naming the config value.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

from files import read_bytes

from .conftest import TALLY, sweep
from .variants import Variant

HUGE = "9" * 5000


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# verify and parity print their steps on stderr in a pipe too (render.StepProgress): "verify    0.0 s  [1/3] ..."
STEP_LINES = re.compile(r"\A(?:(?:verify|parity|convert) +\d+\.\d s  \[\d/\d\] [^\n]*\n)*")


def one_error_line(r, *fragments: str) -> str:
    """Exit 2, nothing on stdout, and on stderr (after any step lines) exactly one short `Error:` line."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == "", r.stdout
    err = STEP_LINES.sub("", r.stderr)
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, r.stderr
    assert len(err) < 600, err  # short: no value printed whole
    for f in fragments:
        assert f in err, (f, err)
    return err


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,), v
            yield from _paths(v, prefix + (k,))


def _with_raw(cfg: dict, path: tuple, raw: str) -> bytes:
    """config.json text with the value at `path` replaced by the raw JSON text `raw` (which json.dumps could not
    write: a 5,000-digit integer, NaN, a nesting deeper than it recurses)."""
    o = json.loads(json.dumps(cfg))
    target = o
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = "@@RAW@@"
    return json.dumps(o).replace('"@@RAW@@"', raw, 1).encode()


def number_variants(file: str, data: bytes, rng: random.Random, per_key: int = 3) -> list[Variant]:
    """Every numeric value (to depth 3) as a huge integer, a non-standard constant or an overflowing float."""
    cfg = json.loads(data)
    raws = [HUGE, "-" + HUGE, "9" * 4301, "1" + "0" * 64, "NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
    out = []
    for path, v in _paths(cfg):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or len(path) > 3:
            continue
        for raw in rng.sample(raws, per_key):
            label = f"{file}: {'.'.join(path)} = {raw[:12]}{'...' if len(raw) > 12 else ''}"
            out.append(Variant(label, file, _with_raw(cfg, path, raw)))
    return out


def nesting_variants(file: str, data: bytes, keys: list[str]) -> list[Variant]:
    """Each key replaced by lists or objects nested deep (within what the parser accepts, and beyond)."""
    cfg = json.loads(data)
    out = []
    for key in keys:
        for depth in (50, 400, 900, 5000):
            for open_, close in (("[", "]"), ('{"a":', "}")):
                raw = open_ * depth + "1" + close * depth
                # An object in place of an object (rope_parameters) whose keys are all unknown is ignored.
                harmless = open_ != "[" and isinstance(cfg.get(key), dict) and depth < 5000
                out.append(Variant(f"{file}: {key} nested {depth} deep in {open_[0]}", file,
                                   _with_raw(cfg, (key,), raw), must_fail=not harmless))
    return out


QUANT = [{"quant_method": m} for m in ("fp8", "bitsandbytes", "gptq", "awq", "compressed-tensors", "torchao")] + [
    {}, "fp8", [1], {"quant_method": {"nested": [1, 2]}}, 0]
ATTN_BAD = ["flash_attention_2", "flash_attention_3", "flex_attention", "paged_attention", "sdpa_paged",
            "kernels-community/flash-attn", {"": "flash_attention_2"}, ["eager"], 5, ""]
ATTN_OK = ["eager", "sdpa", None]


def loader_key_variants(file: str, data: bytes) -> list[Variant]:
    """quantization_config and attention implementations, at the top and (for a multimodal Gemma 3 config) in
    text_config; bos/eos/pad ids around the vocabulary's edges."""
    cfg = json.loads(data)
    vocab = cfg["vocab_size"]
    out = []

    def add(label: str, obj: dict, must_fail: bool = True) -> None:
        out.append(Variant(f"{file}: {label}", file, json.dumps(obj).encode(), must_fail=must_fail))

    multimodal = {"model_type": "gemma3", "text_config": dict(cfg, model_type="gemma3_text")} \
        if cfg["model_type"] == "gemma3_text" else None
    for q in QUANT:
        add(f"quantization_config = {q!r}", dict(cfg, quantization_config=q))
        if multimodal:
            add(f"text_config.quantization_config = {q!r}",
                dict(multimodal, text_config=dict(multimodal["text_config"], quantization_config=q)))
    add("quantization_config = null", dict(cfg, quantization_config=None), must_fail=False)
    for key in ("attn_implementation", "_attn_implementation"):
        for v in ATTN_BAD + ATTN_OK:
            add(f"{key} = {v!r}", dict(cfg, **{key: v}), must_fail=v not in ATTN_OK)
            if multimodal and v in ATTN_BAD[:2]:
                add(f"text_config.{key} = {v!r}",
                    dict(multimodal, text_config=dict(multimodal["text_config"], **{key: v})))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for v in (vocab, vocab + 1, 10**9, -1, -vocab, [1, vocab], [vocab], [2, -3]):
            add(f"{key} = {v!r}", dict(cfg, **{key: v}))
        for v in (0, vocab - 1, [1, vocab - 1]):
            add(f"{key} = {v!r}", dict(cfg, **{key: v}), must_fail=False)
    return out


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_hf_config_numbers_nesting_and_loader_keys(tiny_models, copy_dir, tmp_path, family):
    root = copy_dir(tiny_models.get(family, "hf", tokenizer=False), "hf")
    data = read_bytes(os.path.join(root, "config.json"))
    keys = ["hidden_activation", "model_type", "rope_parameters", "layer_types", "dtype", "vocab_size",
            "sliding_window", "bos_token_id", "eos_token_id", "pad_token_id"]
    variants = number_variants("config.json", data, random.Random(71 if family == "gemma2" else 72))
    variants += nesting_variants("config.json", data, keys)
    variants += loader_key_variants("config.json", data)
    results = sweep("round 2: config.json (hf)", root, variants, str(tmp_path))
    for v, msg in results["error"]:
        assert len(msg) < 600 and "\n" not in msg, (v.label, msg[:300])


def test_keras_config_numbers_and_nesting(tiny_models, copy_dir, tmp_path):
    root = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False), "keras")
    data = read_bytes(os.path.join(root, "config.json"))
    variants = number_variants("config.json", data, random.Random(73), per_key=2)
    cfg = json.loads(data)
    for key in ("vocabulary_size", "sliding_window_size", "num_layers", "head_dim", "final_logit_soft_cap"):
        for depth in (400, 900, 5000):
            o = json.loads(data)
            o["config"][key] = "@@RAW@@"
            raw = json.dumps(o).replace('"@@RAW@@"', "[" * depth + "1" + "]" * depth).encode()
            variants.append(Variant(f"config.json: config.{key} nested {depth} deep", "config.json", raw))
    del cfg
    results = sweep("round 2: config.json (keras)", root, variants, str(tmp_path))
    for v, msg in results["error"]:
        assert len(msg) < 600 and "\n" not in msg, (v.label, msg[:300])


def _edited(tiny_models, tmp_path, edit, family: str = "gemma2", name: str = "cfg") -> str:
    import shutil

    root = str(tmp_path / name)
    shutil.copytree(tiny_models.get(family, "hf"), root)
    path = os.path.join(root, "config.json")
    with open(path) as f:
        text = f.read()
    cfg = json.loads(text)
    new = edit(cfg, text)
    with open(path, "w") as f:
        f.write(new if isinstance(new, str) else json.dumps(cfg))
    return root


CLI_CASES = [
    ("a 5000-digit vocab_size", lambda c, t: t.replace('"vocab_size": 384', '"vocab_size": ' + HUGE), "digits"),
    ("rope_theta Infinity", lambda c, t: t.replace('"rope_theta": 10000.0', '"rope_theta": Infinity'), "Infinity"),
    ("rope_theta 1e999", lambda c, t: t.replace('"rope_theta": 10000.0', '"rope_theta": 1e999'), "overflows"),
    ("hidden_activation nested 900 deep", lambda c, t: t.replace(
        '"hidden_activation": "gelu_pytorch_tanh"', '"hidden_activation": ' + "[" * 900 + "1" + "]" * 900),
     "hidden_activation"),
    ("bos_token_id outside the vocabulary", lambda c, t: c.update(bos_token_id=5000), "bos_token_id 5000"),
    ("pad_token_id outside the vocabulary", lambda c, t: c.update(pad_token_id=7000), "pad_token_id 7000"),
    ("quantization_config fp8", lambda c, t: c.update(quantization_config={"quant_method": "fp8"}),
     "quantization_config"),
    ("attn_implementation flash_attention_2", lambda c, t: c.update(attn_implementation="flash_attention_2"),
     "attn_implementation"),
    ("_attn_implementation from the hub", lambda c, t: c.update(_attn_implementation="kernels-community/fa"),
     "_attn_implementation"),
]


def test_cli_refuses_each_config_class_with_one_line(tiny_models, tmp_path):
    """Every command - the forward-pass ones on their native runtime included - refuses with the same line, and
    no runtime gets to print its own warning first."""
    n = 0
    for i, (label, edit, fragment) in enumerate(CLI_CASES):
        root = _edited(tiny_models, tmp_path, edit, name=f"cfg{i}")
        config = os.path.join(root, "config.json")
        lines = set()
        good = tiny_models.get("gemma2", "hf")
        for args in (("summary", root), ("diff", root, good), ("verify", root), ("parity", root, good),
                     ("convert", root, tmp_path / "o", "--to", "hf")):
            r = invoke(*args)
            lines.add(one_error_line(r, config + ": ", fragment))
            n += 1
        assert len(lines) == 1, (label, lines)
        assert not os.path.exists(tmp_path / "o")
    TALLY["round 2: config.json classes (CLI)"][0] += n
    TALLY["round 2: config.json classes (CLI)"][1] += n


def test_rope_theta_is_written_back_as_standard_json(tiny_models, tmp_path):
    """What is accepted converts to strict JSON: the written config parses with NaN/Infinity refused."""
    root = _edited(tiny_models, tmp_path, lambda c, t: c["rope_parameters"].update(rope_theta=1e308))
    r = invoke("convert", root, tmp_path / "out", "--to", "hf")
    assert r.exit_code == 0, r.output

    def refuse(name):
        raise ValueError(name)

    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f, parse_constant=refuse)["rope_theta"] == 1e308


# ============================================================================= 8. sequence length and memory
@pytest.mark.parametrize("window,expected", [(6, 32), (24, 32), (100, 108), (512, 520), (4096, 4104), (4097, 32),
                                             (20000, 32), (10**9, 32)])
def test_default_sequence_is_bounded(tiny_models, window, expected):
    from gemma_inspect.formats import load
    from gemma_inspect.parity import MAX_DEFAULT_TOKENS, default_tokens

    ckpt = load(tiny_models.get("gemma2", "hf"))
    ckpt.spec = ckpt.spec.replace(sliding_window=window)
    ids = default_tokens(ckpt)
    assert len(ids) == expected <= MAX_DEFAULT_TOKENS
    assert len(default_tokens(ckpt, load(tiny_models.get("gemma2", "keras")))) == expected


def test_verify_with_a_huge_window_is_fast_small_and_says_so(tiny_models, tmp_path):
    """sliding_window 20000 once took verify to 9.6 GB: now the window is reported as not observed, in well under
    1 GB of memory."""
    root = _edited(tiny_models, tmp_path, lambda c, t: c.update(sliding_window=20000))
    # The peak is VmHWM, this process's own: ru_maxrss would carry over the forking pytest process's.
    # An address-space limit keeps a regression from taking the machine (the old code reached 16 GB here).
    code = ("import json, resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
            "from click.testing import CliRunner\n"
            "from gemma_inspect.cli import main\n"
            f"r = CliRunner().invoke(main, ['verify', {root!r}, '--json'])\n"
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(json.dumps({'code': r.exit_code, 'out': r.stdout, 'err': r.stderr, 'rss': hwm}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["code"] == 0, got
    check = next(c for c in json.loads(got["out"])["checks"] if c["name"] == "sliding_window")
    assert check["status"] == "warn" and "not lengthened past 4,104 tokens" in check["evidence"], check
    assert got["rss"] < 1024 * 1024, got["rss"]  # KB: under 1 GB (transformers and torch loaded included)
    TALLY["round 2: sliding_window and memory (CLI)"][0] += 1
    TALLY["round 2: sliding_window and memory (CLI)"][2] += 1


@pytest.mark.parametrize("value", ["20000", "1000000000", "4097", "1e9"])
def test_reference_runtime_runs_huge_windows_short(tiny_models, tmp_path, value):
    root = _edited(tiny_models, tmp_path, lambda c, t: t.replace('"sliding_window": 6', '"sliding_window": ' + value))
    r = invoke("verify", root, "--runtime", "reference", "--json")
    assert r.exit_code == 0, r.output
    check = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "sliding_window")
    assert check["status"] == "warn" and check["evidence"].startswith("keys attended by the last of 32 queries")
    r = invoke("parity", root, tiny_models.get("gemma2", "hf"), "--runtime-a", "reference", "--runtime-b",
               "reference", "--json")
    if value == "1e9":  # parity also tokenizes with transformers' AutoTokenizer, which reads config.json strictly
        one_error_line(r, os.path.join(root, "config.json"), "transformers cannot load")
    else:
        assert r.exit_code in (0, 1) and len(json.loads(r.stdout)["tokens"]) == 32, r.output
    TALLY["round 2: sliding_window and memory (CLI)"][0] += 2
    TALLY["round 2: sliding_window and memory (CLI)"][2] += 2


def test_transformers_strictness_is_one_line(tiny_models, tmp_path):
    """transformers 5 refuses a float for an integer field (sliding_window 1e9) that our reader accepts: the
    transformers runtime's failure is one line naming config.json."""
    root = _edited(tiny_models, tmp_path, lambda c, t: t.replace('"sliding_window": 6', '"sliding_window": 1e9'))
    one_error_line(invoke("verify", root), os.path.join(root, "config.json"), "transformers cannot load")
    TALLY["round 2: sliding_window and memory (CLI)"][0] += 1
    TALLY["round 2: sliding_window and memory (CLI)"][1] += 1


def test_a_forward_pass_that_cannot_fit_is_refused_before_loading(tiny_models, tmp_path):
    from gemma_inspect.errors import InputError
    from gemma_inspect.formats import load
    from gemma_inspect.runtimes.memory import check_fits, forward_bytes

    hf = tiny_models.get("gemma2", "hf")
    ids = ",".join(["5"] * 60000)  # 4 heads x 60,000^2 scores: about 187 GB
    r = invoke("parity", hf, tiny_models.get("gemma2", "keras"), "--tokens", ids)
    one_error_line(r, os.path.join(hf, "config.json") + ": num_attention_heads 4 x 60,000^2 tokens", "available")
    ckpt = load(hf)
    parts = forward_bytes(ckpt.spec, 4104, "float32")
    assert parts["attention"] == 13 * 4104 * 4104 * 4 and parts["logits"] == 3 * 4104 * 384 * 4
    with pytest.raises(InputError) as e:
        check_fits(ckpt, 4104, "float32", "cpu", window_driven=True, available=10**6)
    assert str(e.value).startswith(os.path.join(hf, "config.json") + ": sliding_window 6 (the default sequence")
    assert check_fits(ckpt, 4104, "float32", "cpu", available=10**12) == sum(parts.values())
    gguf = str(tmp_path / "m.gguf")
    assert invoke("convert", hf, gguf, "--to", "gguf").exit_code == 0
    with pytest.raises(InputError) as e:
        check_fits(load(gguf), 10**5, "float32", "cpu", available=10**6)
    assert str(e.value).startswith(gguf + ": ")
    TALLY["round 2: sliding_window and memory (CLI)"][0] += 3
    TALLY["round 2: sliding_window and memory (CLI)"][1] += 3
