"""Pickles whose payload would run code if unpickled without weights_only, in every place a pickle can reach the
tool: a `.bin`, `.pt` or `.pth` file, a shard named by `pytorch_model.bin.index.json`, a `pytorch_model.bin` in a
Hugging Face directory (never opened: HF weights are read from safetensors only), and payloads hidden where
weights_only allows containers. None runs, through any command. (tests/test_gemma_pytorch.py has the `.ckpt`
cases and proves the payload is real.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner

from gemma_inspect.cli import main


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class EvalPayload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


def commands(path: str, tmp_path) -> list[list[str]]:
    return [["summary", path], ["compare", path, "gemma-2b"], ["diff", path, path],
            ["convert", path, str(tmp_path / "out"), "--to", "hf"],
            ["parity", path, "gemma-2b", "--runtime-a", "reference"]]


def refuses_everywhere(path: str, tmp_path, marker, expect: str) -> None:
    for args in commands(path, tmp_path):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (args, r.output)
        assert r.stderr.startswith("Error: ") and expect in r.stderr, (args, r.stderr)
        assert not os.path.exists(tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil.bin", "evil.pt", "evil.pth", "evil.ckpt"])
@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "plain pickle", "eval"])
def test_single_file_payloads_never_run(tmp_path, name, how):
    marker = tmp_path / "RAN"
    path = str(tmp_path / name)
    payload = EvalPayload(str(marker)) if how == "eval" else Payload(str(marker))
    obj = {"model_state_dict": {"embedder.weight": torch.zeros(2, 2), "x": payload}}
    if how == "plain pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how != "legacy torch.save")
    refuses_everywhere(path, tmp_path, marker, "the pickle is not plain tensors" if how != "plain pickle"
                       else "refused")


def test_payload_in_a_shard_of_an_index_never_runs(tmp_path):
    marker = tmp_path / "RAN"
    d = tmp_path / "sharded"
    d.mkdir()
    torch.save({"embedder.weight": torch.zeros(2, 2)}, d / "pytorch_model-00001-of-00002.bin")
    torch.save({"model.norm.weight": Payload(str(marker))}, d / "pytorch_model-00002-of-00002.bin")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "embedder.weight": "pytorch_model-00001-of-00002.bin", "model.norm.weight": "pytorch_model-00002-of-00002.bin"}}))
    refuses_everywhere(str(d), tmp_path, marker, f"{d / 'pytorch_model-00002-of-00002.bin'}: refused")


def test_pytorch_model_bin_in_an_hf_directory_is_never_opened(tiny_models, tmp_path):
    marker = tmp_path / "RAN"
    d = str(tmp_path / "hf")
    shutil.copytree(tiny_models.get("gemma2", "hf", tokenizer=False), d)
    os.remove(os.path.join(d, "model.safetensors"))
    torch.save({"model.embed_tokens.weight": Payload(str(marker))}, os.path.join(d, "pytorch_model.bin"))
    refuses_everywhere(d, tmp_path, marker, "no model.safetensors or model.safetensors.index.json")
