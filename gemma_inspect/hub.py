"""SOURCE as people name models: Hugging Face hub ids, `hf://` and `kaggle://` handles, KerasHub preset names.

Everything goes through huggingface_hub and kagglehub themselves - their caches, tokens, environment variables
(HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN, KAGGLEHUB_CACHE, KAGGLE_USERNAME/KAGGLE_KEY ...) and
progress bars. Nothing here writes into a cache except through those libraries' own downloads.

- A local path always wins over a hub id of the same spelling; built-in cards come next; then hub ids.
- `need="headers"` (summary, compare): an uncached Hugging Face model is described from config.json and the
  safetensors headers alone (huggingface_hub's safetensors metadata API reads them with HTTP range requests),
  kilobytes instead of the weights. `need="full"` (convert, diff, parity, verify, summary --scan) downloads
  the weights, config and tokenizer files of the snapshot.
- Which source was used is said in one line on stderr and kept in `Checkpoint.hub` (summary's "hub" key).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .checkpoint import Checkpoint
from .errors import InputError, UnsupportedError
from .families import FAMILY_TABLE

# huggingface_hub's repo id rules (validate_repo_id): one "/", segments of [\w.-], no "--" or "..", not
# starting or ending with "-" or ".".
_SEGMENT = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
HF_ID = re.compile(rf"^(?P<repo>{_SEGMENT}/{_SEGMENT})(?:@(?P<rev>[^/@\s]+))?$")
HF_URI = re.compile(rf"^hf://(?P<repo>{_SEGMENT}/{_SEGMENT})(?:@(?P<rev>[^/@\s]+))?(?:/(?P<file>.+))?$")
KAGGLE_URI = re.compile(r"^kaggle://(?P<handle>[^/\s]+/[^/\s]+/[^/\s]+/[^/\s]+(?:/\d+)?)/?$")
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.]*$")

# The files of a Hugging Face snapshot that any reader or runtime of this tool opens: configs, safetensors
# weights (one file or shards and their index), tokenizer files, a KerasHub preset's files, a gemma_pytorch
# .ckpt. Nothing else is downloaded (a repository may also hold a 10 GB .gguf or an `original/` folder).
SNAPSHOT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                     "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "model.weights.h5", "model.weights.json", "metadata.json", "preprocessor.json", "task.json",
                     "assets/tokenizer/*", "*.ckpt", "gemma_inspect.json",
                     # a sentence-transformers directory's modules (EmbeddingGemma: 1_Pooling, 2_Dense, ...)
                     "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                     "[0-9]*_*/config.json"]


@dataclass(frozen=True)
class HubRef:
    kind: str  # "hf" | "kaggle" | "preset"
    text: str  # as the user typed it
    repo_id: str = ""  # hf
    revision: str | None = None  # hf
    filename: str | None = None  # hf:// with a file inside the repository
    handle: str = ""  # kaggle: owner/model/framework/variation[/version]


# ----------------------------------------------------------------------------- parsing
def parse(source: str, revision: str | None = None) -> HubRef | None:
    """The hub reference `source` spells, or None when it is not one (then it is a path or nothing)."""
    text = str(source)
    m = HF_URI.match(text) or HF_ID.match(text)
    if m:
        rev = m.group("rev")
        if rev and revision and rev != revision:
            raise InputError(text, f"names revision {rev!r} but --revision is {revision!r}")
        return HubRef("hf", text, repo_id=m.group("repo"), revision=rev or revision,
                      filename=m.groupdict().get("file"))
    if text.startswith("hf://"):
        raise InputError(text, "not a Hugging Face handle; expected hf://org/name[@revision][/file]")
    m = KAGGLE_URI.match(text)
    if m:
        return HubRef("kaggle", text, handle=m.group("handle"))
    if text.startswith("kaggle://"):
        raise InputError(text, "not a Kaggle model handle; expected kaggle://owner/model/framework/variation"
                               "[/version]")
    if PRESET_NAME.match(text):
        handle = keras_hub_presets().get(text)
        if handle:
            return HubRef("preset", text, handle=handle.removeprefix("kaggle://").rstrip("/"))
    return None


_PRESETS: dict[str, str] | None = None


def keras_hub_presets() -> dict[str, str]:
    """KerasHub's built-in preset registry, preset name -> kaggle handle, as keras_hub registers it
    (`register_presets` of every `*_presets.py` of keras_hub/src/models). The files are read as Python
    literals rather than imported: importing keras_hub loads Keras and TensorFlow (about 12 s)."""
    global _PRESETS
    if _PRESETS is None:
        import importlib.util

        found: dict[str, str] = {}
        spec = importlib.util.find_spec("keras_hub")
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            for path in sorted(glob.glob(os.path.join(root, "src", "models", "*", "*_presets.py"))):
                found.update(_presets_in(path))
        _PRESETS = found
    return _PRESETS


def _presets_in(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)):
            continue
        for key, value in zip(node.value.keys, node.value.values):
            try:
                name, entry = ast.literal_eval(key), ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):
                continue
            if isinstance(name, str) and isinstance(entry, dict) and isinstance(entry.get("kaggle_handle"), str):
                out[name] = entry["kaggle_handle"]
    return out


# ----------------------------------------------------------------------------- opening
def open_source(source: str, need: str = "full", revision: str | None = None,
                say: Callable[[str], None] | None = None) -> Checkpoint:
    """A Checkpoint for SOURCE: a local path (always first), a built-in card, or a hub id/handle/preset.

    `need` is "headers" (summary, compare: a Hugging Face model not in the cache is read from its
    safetensors headers over HTTP) or "full" (the files are downloaded into the library's cache).
    `say` receives the one line that tells which source was used (stderr in the CLI)."""
    from .formats import load
    from .spec import is_card

    say = say or _stderr
    text = str(source)
    if os.path.lexists(text):
        if HF_ID.match(text) or ("_" in text and os.sep not in text and _is_preset_name(text)):
            say(f"source: {text} is the local path {os.path.abspath(text)} (a local path wins over the hub "
                f"model of the same name)")
        if revision:
            say(f"source: --revision {revision} applies to Hugging Face hub ids only; {text} is a local path")
        return load(text)
    if is_card(text):
        if revision:
            say(f"source: --revision {revision} applies to Hugging Face hub ids only; {text} is a built-in card")
        return load(text)
    ref = parse(text, revision)
    if ref is None:
        if PRESET_NAME.match(text) and "_" in text:
            import difflib

            near = difflib.get_close_matches(text, list(keras_hub_presets()), n=3)
            if near:
                raise InputError(text, f"no such file or directory, card or KerasHub preset; did you mean "
                                       f"{' or '.join(near)}?")
        return load(text)  # the usual "no such file or directory; expected ..." error
    if ref.kind == "hf":
        return _open_hf(ref, need, say)
    if revision:
        say(f"source: --revision {revision} applies to Hugging Face hub ids only; a Kaggle handle names its "
            f"version in the handle")
    return _open_kaggle(ref, say)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _is_preset_name(text: str) -> bool:
    return bool(PRESET_NAME.match(text)) and text in keras_hub_presets()


def _load_resolved(path: str, hub: dict[str, Any]) -> Checkpoint:
    from .formats import load

    ckpt = load(path)
    ckpt.hub = hub
    return ckpt


# ----------------------------------------------------------------------------- Hugging Face
def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hf_cache_dir(repo_id: str) -> str:
    from huggingface_hub import constants

    return os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))


def _hf_not_cached(ref: HubRef, what: str, error: BaseException | None) -> InputError:
    rev = ref.revision or "main"
    where = f"{what} of revision {rev} in the Hugging Face cache {_hf_cache_dir(ref.repo_id)}"
    if _hf_offline():
        return InputError(ref.text, f"not cached ({where}) and the machine is offline (HF_HUB_OFFLINE=1)")
    from huggingface_hub import constants

    reason = _short(error) if error is not None else "unknown error"
    return InputError(ref.text, f"not cached ({where}) and {constants.ENDPOINT} could not be reached ({reason})")


def _short(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    base = cause if cause is not None and error.__class__.__name__ == "LocalEntryNotFoundError" else error
    msg = str(base).strip().splitlines()[0][:160] if str(base).strip() else ""
    return f"{base.__class__.__name__}{': ' + msg if msg else ''}"


def _hf_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for a model it cannot find, fetch or reach (its own errors, OSError, and
    the HTTP library it is built on: httpx2, httpx or requests depending on its version)."""
    from huggingface_hub import errors

    found: list[type[BaseException]] = [errors.HfHubHTTPError, errors.LocalEntryNotFoundError,
                                        errors.OfflineModeIsEnabled, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _hf_error(ref: HubRef, what: str, e: BaseException) -> InputError:
    from huggingface_hub import errors

    rev = ref.revision or "main"
    if isinstance(e, errors.GatedRepoError):
        return InputError(ref.text, f"gated on the hub: accept its license on the model page and log in "
                                    f"(`hf auth login` or HF_TOKEN) ({_short(e)})")
    if isinstance(e, errors.RepositoryNotFoundError):
        what = "no such model" if ref.text.startswith("hf://") else "no such file or directory, nor a model"
        return InputError(ref.text, f"{what} on the hub {_endpoint()} (or it is private: log in with "
                                    f"`hf auth login` or HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return InputError(ref.text, f"the hub model has no revision {rev!r}")
    if isinstance(e, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) or _is_connection(e):
        return _hf_not_cached(ref, what, e)
    return InputError(ref.text, f"cannot fetch {what} from the hub ({_short(e)})")


def _is_connection(e: BaseException) -> bool:
    """A connection refused, a name that does not resolve, a timeout: the hub could not be reached."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectionError", "ConnectTimeout", "TimeoutException", "Timeout"})


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _open_hf(ref: HubRef, need: str, say: Callable[[str], None]) -> Checkpoint:
    hub = {"kind": "huggingface", "id": ref.text, "repo_id": ref.repo_id, "revision": ref.revision or "main"}
    if ref.filename:
        path = _hf_file(ref)
        hub.update(path=path, commit=_commit_of(path), downloaded="file")
        say(f"source: {ref.text} is the file {ref.filename} of the Hugging Face model {ref.repo_id} "
            f"(revision {hub['revision']}, commit {hub['commit']}): {path}")
        return _load_resolved(path, hub)
    path = None
    if need == "headers" and not _hf_offline():
        try:
            path = _hf_complete_snapshot(ref)
        except _UseSnapshot:  # no safetensors to read headers of, or the hub cannot be reached
            path = _hf_snapshot(ref)  # (then snapshot_download looks in its cache)
        else:
            if path is None:
                return _hf_headers(ref, hub, say)
    if path is None:
        path = _hf_snapshot(ref)
    hub.update(path=path, commit=_commit_of(path), downloaded="snapshot")
    say(f"source: {ref.text} is the Hugging Face model {ref.repo_id} (revision {hub['revision']}, commit "
        f"{hub['commit']}), snapshot {path}")
    return _load_resolved(path, hub)


def _commit_of(path: str) -> str | None:
    """The commit of a path in the HF cache: .../models--org--name/snapshots/<commit>/..."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(1, len(parts) - 1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def _hf_file(ref: HubRef) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision)
    except _hf_errors() as e:
        raise _hf_error(ref, ref.filename or "", e) from None


def _hf_snapshot(ref: HubRef) -> str:
    """The snapshot directory with every file a reader or runtime opens, downloaded by huggingface_hub
    (with its progress bars) when missing, or found in its cache when offline."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=SNAPSHOT_PATTERNS)
    except _hf_errors() as e:
        raise _hf_error(ref, "a snapshot", e) from None
    entries = set(os.listdir(path))
    has_weights = any(e.endswith((".safetensors", ".ckpt")) or e in ("model.weights.h5", "model.weights.json")
                      for e in entries)
    if not has_weights:
        ggufs = sorted(e for e in entries if e.endswith(".gguf")) or ([] if _hf_offline() else _hf_repo_ggufs(ref))
        if ggufs:
            raise InputError(ref.text, "the hub model holds no safetensors, Keras or .ckpt weights; name one of its "
                                       ".gguf files: " + ", ".join(f"hf://{ref.repo_id}/{g}" for g in ggufs[:4]))
        if _hf_offline():
            held = ", ".join(sorted(entries)) or "nothing"
            raise InputError(ref.text, f"the Hugging Face cache holds only {held} of revision "
                                       f"{ref.revision or 'main'} ({path}), not the weights, and the machine is "
                                       f"offline (HF_HUB_OFFLINE=1)")
        raise InputError(ref.text, "the hub model holds no safetensors, Keras or .ckpt weights")
    return path


def _hf_repo_ggufs(ref: HubRef) -> list[str]:
    from huggingface_hub import HfApi

    try:
        return sorted(f for f in HfApi().list_repo_files(ref.repo_id, revision=ref.revision) if f.endswith(".gguf"))
    except _hf_errors():
        return []


class _UseSnapshot(Exception):
    pass


def _hf_complete_snapshot(ref: HubRef) -> str | None:
    """The cached snapshot of the revision's current commit when it already holds config.json and every
    safetensors file the hub lists (then summary reads it like any directory), else None. _UseSnapshot when
    there are no safetensors headers to read (a KerasHub or gemma_pytorch repository) or no hub to ask."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    try:
        info = HfApi().model_info(ref.repo_id, revision=ref.revision)
    except _hf_errors() as e:
        if _is_connection(e):
            raise _UseSnapshot() from None
        raise _hf_error(ref, "the model's file list", e) from None
    names = [s.rfilename for s in (info.siblings or [])]
    wanted = ["config.json"] + [n for n in names if n.endswith(".safetensors") and "/" not in n]
    if len(wanted) == 1:
        raise _UseSnapshot()
    found = [try_to_load_from_cache(ref.repo_id, n, revision=info.sha) for n in wanted]
    if all(isinstance(p, str) for p in found):
        return os.path.dirname(found[0])
    return None


def _hf_headers(ref: HubRef, hub: dict[str, Any], say: Callable[[str], None]) -> Checkpoint:
    """Describe a hub model from config.json and its safetensors headers, without downloading weights."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    try:
        config_path = hf_hub_download(ref.repo_id, "config.json", revision=ref.revision)
        commit = _commit_of(config_path)
        meta = api.get_safetensors_metadata(ref.repo_id, revision=commit or ref.revision)
    except _hf_errors() as e:
        raise _hf_error(ref, "config.json and the safetensors headers", e) from None
    except Exception as e:  # NotASafetensorsRepoError, SafetensorsParsingError
        raise InputError(ref.text, f"cannot read the safetensors headers on the hub ({_short(e)})") from None
    ckpt = headers_checkpoint(ref.text, config_path, meta)
    hub.update(path=None, commit=commit, downloaded="headers")
    ckpt.hub = hub
    n = len(meta.files_metadata)
    say(f"source: {ref.text} is the Hugging Face model {ref.repo_id} (revision {hub['revision']}, commit {commit}): "
        f"read config.json and {n} safetensors header{'s' if n != 1 else ''}, not the weights")
    return ckpt


def headers_checkpoint(source: str, config_path: str, meta: Any) -> Checkpoint:
    """A Checkpoint of a Hugging Face model from config.json and huggingface_hub's SafetensorsRepoMetadata:
    the same spec, canonical names and checks as formats/hf.py's reader, tensors known by header only."""
    from .checkpoint import TensorRef
    from .formats import hf
    from .formats.common import read_json_object
    from .formats.safetensors_io import ITEMSIZE, ST_DTYPES

    cfg = read_json_object(config_path, "config.json")
    entries: dict[str, tuple[str, str, tuple[int, ...], int]] = {}
    for fname, fmeta in sorted(meta.files_metadata.items()):
        where = f"{source}/{fname}"
        for name, info in fmeta.tensors.items():
            dtype = ST_DTYPES.get(info.dtype)
            if dtype is None:
                raise InputError(where, f"tensor {name!r}: unknown dtype {info.dtype!r}")
            shape = tuple(int(s) for s in info.shape)
            begin, end = info.data_offsets
            want = hf._numel(shape) * ITEMSIZE[dtype]
            if end - begin != want:
                raise InputError(where, f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} of {dtype} "
                                        f"(expected {want})")
            if name in entries:
                raise InputError(where, f"tensor {name!r} is also stored in {entries[name][0]}")
            entries[name] = (fname, dtype, shape, end - begin)
    if meta.sharded:  # as formats/hf.py checks a local index against its shards
        index = f"{source}/model.safetensors.index.json"
        for name, fname in meta.weight_map.items():
            if name not in entries or entries[name][0] != fname:
                where = "in no shard" if name not in entries else f"in {entries[name][0]}"
                raise InputError(index, f"maps {name!r} to {fname} but it is {where}")
        unlisted = [n for n in entries if n not in meta.weight_map]
        if unlisted:
            raise InputError(index, f"does not list {unlisted[0]!r}, which {entries[unlisted[0]][0]} holds")

    def headers_only(name: str) -> Callable[[], Any]:
        def fail() -> Any:
            raise UnsupportedError(f"{source}: only the headers of {name} were read from the hub; run a "
                                   f"command that downloads the model (convert, diff, parity, verify)")
        return fail

    stored = {name: (dtype, shape, lambda canonical, f=fname, n=name, nb=nbytes, d=dtype, s=shape: TensorRef(
        name=canonical, shape=s, dtype=d, nbytes=nb, origin=f"{source}/{f}:{n}", loader=headers_only(n)))
        for name, (fname, dtype, shape, nbytes) in entries.items()}
    where = f"{source}/{'model.safetensors.index.json' if meta.sharded else 'model.safetensors'}"
    # formats/hf.py's own mapping, checks and order, as for a local directory (base models included)
    spec, ordered, ignored, notes, base = hf.from_headers(cfg, config_path, stored, where)
    notes.append("read from the hub's safetensors headers only: tokenizer and tensor values not downloaded")
    row = FAMILY_TABLE.get(spec.family)
    if row is not None and not row.rules.lm_head:
        notes.append("an embedding model: its sentence-transformers modules (pooling, dense heads) are not read from "
                     "the hub's headers; pass the downloaded directory to see and count them")
    return Checkpoint(spec=spec, tensors=ordered, source=source, format="hf", tokenizer=None, notes=notes,
                      ignored=ignored, config=cfg, files=[config_path], base_model=base)


# ----------------------------------------------------------------------------- Kaggle
def _open_kaggle(ref: HubRef, say: Callable[[str], None]) -> Checkpoint:
    path = kaggle_download(ref)
    hub = {"kind": "kaggle", "id": ref.text, "handle": f"kaggle://{ref.handle}", "path": path}
    what = f"the KerasHub preset {ref.text} = kaggle://{ref.handle}" if ref.kind == "preset" else \
        f"the Kaggle model {ref.text}"
    if ref.kind == "preset":
        hub["preset"] = ref.text
    say(f"source: {what}, from {path}")
    return _load_resolved(path, hub)


def kaggle_download(ref: HubRef) -> str:
    """kagglehub.model_download(handle): its cache (KAGGLEHUB_CACHE), credentials and progress bars. A
    versioned handle already cached (with kagglehub's completion marker) is used without any request."""
    import kagglehub
    from kagglehub.cache import Cache
    from kagglehub.config import get_cache_folder
    from kagglehub.handle import parse_model_handle

    try:
        handle = parse_model_handle(ref.handle)
    except ValueError as e:
        raise InputError(ref.text, f"not a Kaggle model handle ({e})") from None
    if handle.is_versioned():  # kagglehub's own cache lookup (marker + directory), no request
        cached = Cache().load_from_cache(handle)
        if cached:
            return cached
    where = os.path.join(get_cache_folder(), "models", handle.owner, handle.model, handle.framework,
                         handle.variation, str(handle.version) if handle.is_versioned() else "<latest version>")
    with _kagglehub_logs_to_stderr():
        try:
            return kagglehub.model_download(ref.handle)
        except Exception as e:
            import requests

            if isinstance(e, requests.exceptions.ConnectionError) or isinstance(e.__cause__,
                                                                                 requests.exceptions.ConnectionError):
                version = "" if handle.is_versioned() else " (a handle without a version needs kaggle.com to " \
                                                           "find the latest one)"
                raise InputError(ref.text, f"not cached (kagglehub cache {where}) and kaggle.com could not be "
                                           f"reached: the machine is offline{version}") from None
            raise InputError(ref.text, f"kagglehub could not download it into {where} ({_short(e)})") from None


class _kagglehub_logs_to_stderr:
    """kagglehub logs its progress lines to stdout (and kagglesdk prints there when verbose), where they would
    corrupt `--json`: while it runs, its handlers and print() write to stderr."""

    def __enter__(self) -> None:
        import contextlib
        import logging

        stdout = sys.stdout
        self.saved = []
        for h in logging.getLogger("kagglehub").handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (stdout, sys.__stdout__):
                self.saved.append((h, h.stream))
                h.setStream(sys.stderr)
        self.redirect = contextlib.redirect_stdout(sys.stderr)
        self.redirect.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.redirect.__exit__(*exc)
        for h, stream in self.saved:
            h.setStream(stream)
