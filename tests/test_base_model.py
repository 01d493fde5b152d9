"""Base-model HF checkpoints: saved from GemmaModel / Gemma2Model / Gemma3TextModel (`AutoModel.save_pretrained`, as
embedding models are), tensors named without the `model.` prefix and no LM head. transformers loads them; so does
this reader, and `summary` says there is no LM head, neither stored nor tied."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.formats import load


@pytest.fixture(scope="module")
def base_of(tiny_models, tmp_path_factory):
    from transformers import AutoModel

    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            out = str(tmp_path_factory.mktemp(f"base-{family}"))
            AutoModel.from_pretrained(tiny_models.get(family, tokenizer=False)).save_pretrained(out)
            built[family] = out
        return built[family]

    return get


@pytest.mark.parametrize("family,cls", [("gemma", "GemmaModel"), ("gemma2", "Gemma2Model"),
                                        ("gemma3", "Gemma3TextModel")])
def test_base_model_reads_with_the_causal_lm_weights(tiny_models, base_of, family, cls):
    from safetensors import safe_open

    path = base_of(family)
    assert json.load(open(f"{path}/config.json"))["architectures"] == [cls]
    with safe_open(f"{path}/model.safetensors", "np") as f:
        names = set(f.keys())
    assert "embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head")) for n in names)
    base, full = load(path), load(tiny_models.get(family, tokenizer=False))
    assert list(base.tensors) == list(full.tensors)
    for name, ref in full.tensors.items():
        assert np.array_equal(base.tensors[name].load(), ref.load()), name
    assert base.lm_head == "none" and full.lm_head == "tied"
    assert any("a base model" in n and "no LM head, neither stored nor tied" in n for n in base.notes)


def test_summary_says_there_is_no_lm_head(base_of, tiny_models):
    r = CliRunner().invoke(main, ["summary", base_of("gemma3"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["lm_head"] == "none"
    r = CliRunner().invoke(main, ["summary", base_of("gemma3")])
    assert r.exit_code == 0 and "no LM head: a base model, neither stored nor tied" in r.output
    r = CliRunner().invoke(main, ["summary", tiny_models.get("gemma3"), "--json"])
    assert json.loads(r.output)["lm_head"] == "tied"


def test_a_causal_lm_name_in_a_base_model_is_not_taken_for_one(tiny_models, copy_dir):
    """Prefixed and bare names together are no base model: the bare ones are not decoder tensors."""
    from safetensors.numpy import load_file, save_file

    path = copy_dir(tiny_models.get("gemma2", tokenizer=False))
    tensors = load_file(f"{path}/model.safetensors")
    tensors["layers.0.extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, f"{path}/model.safetensors", metadata={"format": "pt"})
    from gemma_inspect.errors import InputError

    with pytest.raises(InputError, match=r"tensors not described by .*config.json: layers\.0\.extra\.weight$"):
        load(path)
