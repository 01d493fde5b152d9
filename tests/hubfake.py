"""Hub caches in the libraries' real on-disk layouts, and a local server that speaks the part of the Hugging
Face hub API huggingface_hub uses, so that hub ids are tested offline and against 127.0.0.1, never the internet.

Hugging Face cache (huggingface_hub's file_download): <HF_HUB_CACHE>/models--<org>--<name>/
    blobs/<etag>                        the bytes; etag = sha256 of an LFS file, git blob sha1 otherwise
    snapshots/<commit>/<path>           relative symlinks ../../blobs/<etag> (one more ../ per subfolder)
    refs/<revision>                     the commit hash, no newline
kagglehub cache (kagglehub/cache.py): <KAGGLEHUB_CACHE>/models/<owner>/<model>/<framework>/<variation>/
    <version>/...                       the files
    <version>.complete                  the completion marker kagglehub writes after a full download
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LFS_SUFFIXES = (".safetensors", ".h5", ".model", ".ckpt", ".gguf", ".bin")


def repo_files(src: str) -> dict[str, bytes]:
    """Every file under `src` (a checkpoint directory), by its path relative to `src`, with '/' separators."""
    out = {}
    for root, _dirs, files in os.walk(src):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, src).replace(os.sep, "/")] = fh.read()
    return dict(sorted(out.items()))


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_sha1(data)


def commit_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for path, data in files.items():
        h.update(path.encode() + b"\0" + etag(path, data).encode())
    return h.hexdigest()


def populate_hf_cache(cache: str, repo_id: str, src: str, revision: str = "main",
                      only: tuple[str, ...] | None = None) -> str:
    """Put the files of `src` into the HF hub cache `cache` as huggingface_hub lays them out; returns the
    snapshot directory. `only`: store just these files (a partial snapshot, as a headers-only run leaves)."""
    files = repo_files(src)
    commit = commit_of(files)
    repo_dir = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo_dir, "snapshots", commit)
    for path, data in files.items():
        if only is not None and path not in only:
            continue
        link = os.path.join(snap, *path.split("/"))
        if os.path.lexists(link):  # another ref to the same commit
            continue
        tag = etag(path, data)
        blob = os.path.join(repo_dir, "blobs", tag)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        depth = path.count("/")
        os.symlink(os.path.join(*([".."] * (2 + depth)), "blobs", tag), link)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", revision), "w") as f:
        f.write(commit)
    return snap


def populate_kaggle_cache(cache: str, handle: str, src: str) -> str:
    """Put `src` into the kagglehub cache as kagglehub.model_download leaves a finished download."""
    owner, model, framework, variation, version = handle.removeprefix("kaggle://").split("/")
    base = os.path.join(cache, "models", owner, model, framework, variation)
    dest = os.path.join(base, version)
    shutil.copytree(src, dest)
    open(os.path.join(base, f"{version}.complete"), "w").close()
    return dest


# ----------------------------------------------------------------------------- a local hub
class _LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) serving `handler` on a thread while the `with` block runs."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class FakeHub(_LocalServer):
    """A threaded HTTP server on 127.0.0.1 serving model repositories the way huggingface.co does for
    huggingface_hub: /api/models/<repo>[/revision/<rev>], /api/models/<repo>/tree/<rev>, and
    HEAD/GET /<repo>/resolve/<rev>/<file> with X-Repo-Commit, ETag/X-Linked-Etag and Range support.
    Every request is logged as (method, path, range header, body bytes sent)."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.gated: set[str] = set()  # repositories whose files answer 403 GatedRepo (as Gemma's do without a token)
        self.log: list[tuple[str, str, str | None, int]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

        super().__init__(Handler)

    def add(self, repo_id: str, src: str) -> str:
        files = repo_files(src)
        commit = commit_of(files)
        self.repos[repo_id] = (commit, files)
        return commit


    def bytes_sent(self, suffix: str = "") -> int:
        return sum(n for _m, p, _r, n in self.log if p.split("?")[0].endswith(suffix))

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], head: bool,
              ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
        with self._lock:
            self.log.append((h.command, h.path, h.headers.get("Range"), 0 if head else len(body)))

    def _json(self, h: BaseHTTPRequestHandler, obj: Any, head: bool, status: int = 200,
              extra: dict[str, str] | None = None) -> None:
        self._send(h, status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(extra or {})}, head)

    def _missing(self, h: BaseHTTPRequestHandler, head: bool, code: str) -> None:
        self._json(h, {"error": code}, head, 404, {"X-Error-Code": code, "X-Error-Message": code})

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?")[0]
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._missing(h, head, "RepoNotFound")
            commit, files = repo
            if m.group(2) not in (None, "main", commit):
                return self._missing(h, head, "RevisionNotFound")
            return self._json(h, {"id": m.group(1), "modelId": m.group(1), "sha": commit, "private": False,
                                  "siblings": [{"rfilename": p} for p in files]}, head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._missing(h, head, "RepoNotFound")
            commit, files = repo
            entries = []
            for p, data in files.items():
                e: dict[str, Any] = {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
                if is_lfs(p):
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(e)
            return self._json(h, entries, head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._missing(h, head, "RepoNotFound")
            commit, files = repo
            if m.group(2) not in ("main", commit):
                return self._missing(h, head, "RevisionNotFound")
            if m.group(1) in self.gated:
                msg = f"Access to model {m.group(1)} is restricted. You must have access to it and be authenticated."
                return self._json(h, {"error": msg}, head, 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg})
            data = files.get(m.group(3))
            if data is None:
                return self._missing(h, head, "EntryNotFound")
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag(m.group(3), data)}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if is_lfs(m.group(3)):
                headers["X-Linked-Etag"] = f'"{etag(m.group(3), data)}"'
                headers["X-Linked-Size"] = str(len(data))
            rng = h.headers.get("Range")
            if rng:
                r = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                start, end = int(r.group(1)), int(r.group(2)) if r.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(h, 206, data[start:end + 1], headers, head)
            return self._send(h, 200, data, headers, head)
        return self._missing(h, head, "NotFound")


class FakeKaggle(_LocalServer):
    """A threaded HTTP server on 127.0.0.1 answering the two calls kagglehub makes to download a model version
    (kagglesdk's JSON-over-POST API): models.ModelApiService/ListModelInstanceVersionFiles and
    /DownloadModelInstanceVersion (one file's bytes). Requests are logged as (method name, request body)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str, str, int], dict[str, bytes]] = {}
        self.log: list[tuple[str, dict]] = []
        kaggle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                method = self.path.rsplit("/", 1)[-1]
                kaggle.log.append((method, body))
                key = (body.get("ownerSlug"), body.get("modelSlug"), body.get("instanceSlug"),
                       body.get("versionNumber"))
                files = kaggle.models.get(key)
                if files is None or (method == "DownloadModelInstanceVersion" and body.get("path") not in files):
                    out, status, ctype = json.dumps({"code": 404, "message": "Not found"}).encode(), 404, \
                        "application/json"
                elif method == "ListModelInstanceVersionFiles":
                    out, status, ctype = json.dumps({"files": [{"name": n, "size": len(d)} for n, d in files.items()],
                                                     "nextPageToken": ""}).encode(), 200, "application/json"
                else:
                    out, status, ctype = files[body["path"]], 200, "application/octet-stream"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        super().__init__(Handler)

    def add(self, handle: str, src: str) -> None:
        owner, model, _framework, variation, version = handle.removeprefix("kaggle://").split("/")
        self.models[(owner, model, variation, int(version))] = repo_files(src)



# kagglesdk has no endpoint variable: KAGGLE_API_ENVIRONMENT=LOCALHOST selects its "http://localhost" entry,
# which this prelude points at the fake server (FAKE_KAGGLE_URL) before the CLI runs.
KAGGLE_CLI = ("import os, kagglesdk.kaggle_env as e; e._env_to_endpoint[e.KaggleEnv.LOCAL] = os.environ['FAKE_KAGGLE_URL']; "
              "from gemma_inspect.cli import main; main()")
