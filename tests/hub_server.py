"""A small Hugging Face Hub on the loopback interface, for tests that push and load repos for real.

It speaks the HTTP API that ``huggingface_hub`` and ``datasets`` use, over real sockets, so ``create_repo``,
``upload_file``/``create_commit`` (regular and LFS files), ``Dataset.push_to_hub``, ``DatasetCard.push_to_hub``
(with its ``validate-yaml`` call), ``hf_hub_download``, ``snapshot_download``, ``HfFileSystem`` and
``load_dataset(repo_id)`` run unmodified against it. Model, dataset and Space repos are supported.

Routes (``{t}`` is ``models``/``datasets``/``spaces``; ``{p}`` the URL prefix: empty, ``datasets/``, ``spaces/``):

* ``POST /api/repos/create`` (409 with the repo ``url`` when it exists), ``DELETE /api/repos/delete``
* ``GET /api/{t}/{id}`` and ``/api/{t}/{id}/revision/{rev}`` (info with siblings and ``cardData``)
* ``POST /api/{t}/{id}/preupload/{rev}``, ``POST /api/{t}/{id}/commit/{rev}`` (ndjson; ``parentCommit`` -> 412
  when stale; ``create_pr``), ``POST /api/{t}/{id}/branch/{name}``, ``GET /api/{t}/{id}/refs``,
  ``GET /api/{t}/{id}/commits/{rev}``
* ``GET /api/{t}/{id}/tree/{rev}[/{path}]`` (``recursive``), ``POST /api/{t}/{id}/paths-info/{rev}``
* ``POST /{p}{id}.git/info/lfs/objects/batch``, then the upload ``PUT`` (single part, or multipart when
  ``multipart_chunk_size`` is set), its completion ``POST`` and ``verify``; the server checks size and sha256
* ``GET``/``HEAD /{p}{id}/resolve/{rev}/{path}`` with ``Range``, ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files
* ``POST /api/validate-yaml`` (the front matter must parse into a mapping; ``license``, ``language``, ``tags``,
  ``task_categories``, ``size_categories`` must be strings or lists of strings), ``GET /api/whoami-v2``

What it does NOT cover: the Xet protocol (clients must run with ``HF_HUB_DISABLE_XET=1``; no ``xetHash`` is
ever returned), authentication and permissions (any token or none is accepted; private repos are readable by
all), the Hub's own checks (metadata schema validation of cards, gated repos, file-size limits, security
scans, rate limits), pagination of large listings, Git over HTTP (clone/push), and the dataset viewer. Clients
read ``HF_ENDPOINT`` when ``huggingface_hub``/``datasets`` are first imported, so code that talks to this server
through module-level defaults must run in a process started with ``HF_ENDPOINT`` set (see
:meth:`LocalHubServer.client_env`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from dermtrl.llm.loopback import LoopbackHTTPServer, LoopbackServer

__all__ = ["LocalHubServer", "REPO_TYPES"]

#: URL prefix of each repo type, as on huggingface.co.
REPO_TYPES: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
#: Files stored through LFS, as the Hub's default .gitattributes says (plus anything binary or over 10 MB).
LFS_SUFFIXES: tuple[str, ...] = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".lfs", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar",
    ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst", ".png", ".jpg", ".jpeg",
    ".webp", ".gif", ".tif", ".tiff", ".wav", ".mp3", ".flac", ".mp4",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class _File:
    """One file in a commit: regular content, or a pointer to an LFS object."""

    size: int
    blob_oid: str
    content: bytes | None = None  # regular files
    lfs_sha256: str | None = None  # LFS files

    def entry(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.blob_oid, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            pointer = _lfs_pointer(self.lfs_sha256, self.size)
            out["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": len(pointer)}
        return out


@dataclass
class _Commit:
    oid: str
    title: str
    message: str
    date: str
    parents: list[str]
    files: dict[str, _File]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pr_count: int = 0

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if revision in self.commits:
            return self.commits[revision]
        matches = [c for oid, c in self.commits.items() if len(revision) >= 7 and oid.startswith(revision)]
        return matches[0] if len(matches) == 1 else None


class _HubError(Exception):
    """An HTTP error answer, with the Hub's ``X-Error-Code`` where the client relies on it."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackHTTPServer
    timeout = 30.0

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # every request is in LocalHubServer.requests

    # --- plumbing -------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().split(b";", 1)[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self.wfile.flush()

    def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        body = b"" if method in ("GET", "HEAD") else self._body()
        owner._record(method, self.path, dict(self.headers.items()), body)
        try:
            owner._route(self, method, body)
        except _HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            payload = {"error": err.message, **err.extra}
            data = json.dumps(payload).encode()
            self._send(err.status, data, "application/json", headers, head=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class LocalHubServer(LoopbackServer):
    """A threaded, in-memory Hub on ``127.0.0.1`` (a free port). Use as a context manager.

    Point clients at :attr:`endpoint` (in a subprocess: ``env=server.client_env()``). Observations:
    :attr:`requests` (method, path, headers of every request), :attr:`unhandled` (requests no route matched:
    a test can assert it stays empty), :meth:`files` and :meth:`read` for what a repo holds, and
    :attr:`lfs_uploads` (how many LFS objects arrived through the upload URLs). ``multipart_chunk_size``
    makes the LFS batch answer ask for multipart uploads of files larger than it.
    """

    def __init__(self, *, multipart_chunk_size: int | None = None, user: str = "local-user") -> None:
        self.multipart_chunk_size = multipart_chunk_size
        self.user = user
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, bytes] = {}
        self._parts: dict[tuple[str, int], bytes] = {}
        self._requests: list[dict[str, Any]] = []
        self._unhandled: list[str] = []
        self._lfs_uploads = 0
        self._counter = 0

    # --- lifecycle (LoopbackServer) ------------------------------------------------------------------
    thread_name = "local-hub"
    handler_class = _Handler

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHubServer is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client_env(self, base: Mapping[str, str] | None = None, *, token: str | None = "hf_local_test_token",
                   cache_dir: str | None = None) -> dict[str, str]:
        """Environment for a client process talking to this server (endpoint, no Xet, online, own cache)."""
        import os

        env = dict(os.environ if base is None else base)
        env.update({"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                    "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1,localhost",
                    "no_proxy": "127.0.0.1,localhost"})
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(proxy, None)
        if token is not None:
            env["HF_TOKEN"] = token
        if cache_dir is not None:
            env["HF_HOME"] = cache_dir
            env["HF_DATASETS_CACHE"] = os.path.join(cache_dir, "datasets")
        return env

    # --- observations ---------------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def unhandled(self) -> list[str]:
        with self._lock:
            return list(self._unhandled)

    @property
    def lfs_uploads(self) -> int:
        with self._lock:
            return self._lfs_uploads

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, dict[str, Any]]:
        """``path -> {"size", "lfs"}`` at a revision."""
        commit = self._commit(repo_type, repo_id, revision)
        return {p: {"size": f.size, "lfs": f.lfs_sha256 is not None} for p, f in sorted(commit.files.items())}

    def read(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        commit = self._commit(repo_type, repo_id, revision)
        if path not in commit.files:
            raise KeyError(f"{repo_type} repo {repo_id}@{revision} has no file {path!r}")
        return self._content(commit.files[path])

    def commit_titles(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Commit titles, newest first."""
        with self._lock:
            commit: _Commit | None = self._commit(repo_type, repo_id, revision)
            titles = []
            while commit is not None:
                titles.append(commit.title)
                commit = self._repos[(repo_type, repo_id)].commits.get(commit.parents[0]) if commit.parents else None
            return titles

    # --- internals ------------------------------------------------------------------------------------
    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self._requests.append({"method": method, "path": path, "headers": {k.lower(): v for k, v in
                                                                                headers.items()}})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> _Commit:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise _HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
            commit = repo.resolve(revision)
            if commit is None:
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return commit

    def _content(self, f: _File) -> bytes:
        if f.content is not None:
            return f.content
        assert f.lfs_sha256 is not None
        with self._lock:
            return self._lfs[f.lfs_sha256]

    def _new_oid(self, *parts: str) -> str:
        with self._lock:
            self._counter += 1
            seed = "\0".join((*parts, str(self._counter), str(time.time_ns())))
        return hashlib.sha1(seed.encode()).hexdigest()  # noqa: S324 - a commit id, not security

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{REPO_TYPES[repo_type]}{repo_id}"

    # --- routing --------------------------------------------------------------------------------------
    def _route(self, h: _Handler, method: str, body: bytes) -> None:
        split = urlsplit(h.path)
        query = parse_qs(split.query)
        raw_parts = [p for p in split.path.split("/") if p != ""]
        parts = [unquote(p) for p in raw_parts]
        if parts[:1] == ["api"]:
            self._route_api(h, method, parts[1:], query, body)
            return
        # LFS: /{prefix}{ns}/{name}.git/info/lfs/objects/batch, our upload/verify URLs, resolve URLs
        if parts[:1] == ["_lfs"]:
            self._route_lfs_transfer(h, method, parts[1:], body)
            return
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type = parts[0][:-1]
            parts = parts[1:]
        if len(parts) >= 2 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            self._lfs_batch(h, repo_type, f"{parts[0]}/{parts[1][:-4]}", body)
            return
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            self._resolve(h, method, repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return
        self._not_found(method, h.path)

    def _not_found(self, method: str, path: str) -> None:
        with self._lock:
            self._unhandled.append(f"{method} {path}")
        raise _HubError(404, f"no route {method} {path} on the local Hub")

    def _route_api(self, h: _Handler, method: str, parts: list[str], query: dict[str, list[str]],
                   body: bytes) -> None:
        if parts == ["validate-yaml"] and method == "POST":
            self._validate_yaml(h, body)
            return
        if parts == ["whoami-v2"] and method == "GET":
            h._json(200, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                          "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
            return
        if parts == ["repos", "create"] and method == "POST":
            self._create_repo(h, json.loads(body or b"{}"))
            return
        if parts == ["repos", "delete"] and method == "DELETE":
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with self._lock:
                if self._repos.pop((repo_type, repo_id), None) is None:
                    raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            h._json(200, {})
            return
        if len(parts) >= 3 and parts[0] in _API_TYPES:
            repo_type, repo_id, rest = _API_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
            self._route_repo(h, method, repo_type, repo_id, rest, query, body)
            return
        self._not_found(method, h.path)

    def _route_repo(self, h: _Handler, method: str, repo_type: str, repo_id: str, rest: list[str],
                    query: dict[str, list[str]], body: bytes) -> None:
        if method == "GET" and (not rest or rest[0] == "revision"):
            revision = rest[1] if len(rest) >= 2 else "main"
            self._info(h, repo_type, repo_id, revision)
        elif method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
            self._preupload(h, repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
            self._commit_ndjson(h, repo_type, repo_id, rest[1], body, create_pr=query.get("create_pr") == ["1"])
        elif method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
            self._tree(h, repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive)
        elif method == "POST" and rest[:1] == ["paths-info"] and len(rest) == 2:
            form = parse_qs(body.decode("utf-8"))
            self._paths_info(h, repo_type, repo_id, rest[1], form.get("paths") or [])
        elif method == "POST" and rest[:1] == ["branch"] and len(rest) >= 2:
            self._create_branch(h, repo_type, repo_id, "/".join(rest[1:]), json.loads(body or b"{}"))
        elif method == "GET" and rest == ["refs"]:
            self._refs(h, repo_type, repo_id)
        elif method == "GET" and rest[:1] == ["commits"] and len(rest) == 2:
            self._commits(h, repo_type, repo_id, rest[1])
        else:
            self._not_found(method, h.path)

    # --- repos ----------------------------------------------------------------------------------------
    def _create_repo(self, h: _Handler, payload: dict[str, Any]) -> None:
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _HubError(400, f"invalid repo type {repo_type!r}")
        name, org = payload.get("name"), payload.get("organization") or self.user
        if not name:
            raise _HubError(400, "missing repo name")
        repo_id = f"{org}/{name}"
        url = self._repo_url(repo_type, repo_id)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                # huggingface_hub reads `url` from a 409 when exist_ok=True on some paths: always send it.
                raise _HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            created = _now_iso()
            repo = _Repo(repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")),
                         created)
            first = _Commit(self._new_oid(repo_id, "initial"), "initial commit", "", created, [], {})
            if repo_type == "model" or repo_type == "dataset" or repo_type == "space":
                gitattributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
                first.files[".gitattributes"] = _File(len(gitattributes), _git_blob_oid(gitattributes), gitattributes)
            repo.commits[first.oid] = first
            repo.refs["main"] = first.oid
            self._repos[(repo_type, repo_id)] = repo
        h._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _info(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        commit = self._commit(repo_type, repo_id, revision)
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
        siblings = []
        for path, f in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path, "size": f.size, "blobId": f.blob_oid}
            if f.lfs_sha256 is not None:
                sib["lfs"] = {"sha256": f.lfs_sha256, "size": f.size,
                              "pointerSize": len(_lfs_pointer(f.lfs_sha256, f.size))}
            siblings.append(sib)
        card_data = None
        if "README.md" in commit.files:
            card_data = _front_matter(self._content(commit.files["README.md"]).decode("utf-8", "replace"))[0]
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],  # noqa: S324
            "id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo.created, "lastModified": commit.date, "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if isinstance(card_data, dict):
            info["cardData"] = card_data
        if repo_type == "model":
            info["modelId"] = repo_id
        if repo_type == "space":
            info["sdk"] = (card_data or {}).get("sdk") if isinstance(card_data, dict) else None
            info["runtime"] = {"stage": "NO_APP_FILE", "hardware": {"current": None, "requested": None}}
        h._json(200, info)

    def _create_branch(self, h: _Handler, repo_type: str, repo_id: str, branch: str, payload: dict) -> None:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            if branch in repo.refs:
                raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                raise _HubError(404, f"Invalid rev id: {payload.get('startingPoint')}", "RevisionNotFound")
            repo.refs[branch] = start.oid
        h._json(200, {})

    def _refs(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                        for n, oid in repo.refs.items() if not n.startswith("refs/")]
            prs = [{"name": n, "ref": n, "targetCommit": oid}
                   for n, oid in repo.refs.items() if n.startswith("refs/pr/")]
        h._json(200, {"branches": branches, "tags": [], "converts": [], "pullRequests": prs})

    def _commits(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        commit: _Commit | None = self._commit(repo_type, repo_id, revision)
        out = []
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            while commit is not None:
                out.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                            "authors": [{"user": self.user}], "date": commit.date})
                commit = repo.commits.get(commit.parents[0]) if commit.parents else None
        h._json(200, out)

    # --- uploads --------------------------------------------------------------------------------------
    def _preupload(self, h: _Handler, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        commit = self._commit(repo_type, repo_id, revision)
        files = []
        for item in payload.get("files") or []:
            path, size = item["path"], int(item.get("size") or 0)
            sample = base64.b64decode(item.get("sample") or "")
            lfs = size >= LFS_SIZE_THRESHOLD or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample
            existing = commit.files.get(path)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.blob_oid if existing is not None else None})
        h._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, h: _Handler, repo_type: str, repo_id: str, body: bytes) -> None:
        self._commit(repo_type, repo_id, "main")  # the repo must exist
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise _HubError(400, "only the 'upload' LFS operation is supported by the local Hub")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            with self._lock:
                present = oid in self._lfs
            if not present:
                href = f"{self.endpoint}/_lfs/{oid}/{size}"
                header: dict[str, str] = {}
                if self.multipart_chunk_size and size > self.multipart_chunk_size:
                    n_parts = -(-size // self.multipart_chunk_size)
                    header = {f"{i:05d}": f"{href}/part/{i}" for i in range(1, n_parts + 1)}
                    header["chunk_size"] = str(self.multipart_chunk_size)
                entry["actions"] = {"upload": {"href": href, "header": header},
                                    "verify": {"href": f"{href}/verify", "header": {}}}
            objects.append(entry)
        h._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                {"Content-Type": "application/vnd.git-lfs+json"})

    def _route_lfs_transfer(self, h: _Handler, method: str, parts: list[str], body: bytes) -> None:
        if len(parts) < 2:
            self._not_found(method, h.path)
        oid, size = parts[0], int(parts[1])
        if method == "PUT" and len(parts) == 2:  # single-part upload
            self._store_lfs(oid, size, body)
            h._json(200, {})
        elif method == "PUT" and len(parts) == 4 and parts[2] == "part":  # one part of a multipart upload
            with self._lock:
                self._parts[(oid, int(parts[3]))] = body
            h._send(200, b"", "text/plain", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})  # noqa: S324
        elif method == "POST" and len(parts) == 2:  # multipart completion
            payload = json.loads(body or b"{}")
            numbers = sorted(int(p["partNumber"]) for p in payload.get("parts") or [])
            with self._lock:
                missing = [n for n in numbers if (oid, n) not in self._parts]
                if missing or not numbers:
                    raise _HubError(400, f"multipart completion for {oid}: parts {missing or 'none'} not uploaded")
                data = b"".join(self._parts.pop((oid, n)) for n in numbers)
            self._store_lfs(oid, size, data)
            h._json(200, {})
        elif method == "POST" and len(parts) == 3 and parts[2] == "verify":
            payload = json.loads(body or b"{}")
            with self._lock:
                stored = self._lfs.get(str(payload.get("oid")))
            if stored is None or len(stored) != int(payload.get("size", -1)):
                raise _HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
            h._json(200, {})
        else:
            self._not_found(method, h.path)

    def _store_lfs(self, oid: str, size: int, data: bytes) -> None:
        if len(data) != size:
            raise _HubError(400, f"LFS object {oid}: got {len(data)} bytes, expected {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HubError(400, f"LFS object {oid}: content does not match its sha256")
        with self._lock:
            self._lfs[oid] = data
            self._lfs_uploads += 1

    def _commit_ndjson(self, h: _Handler, repo_type: str, repo_id: str, revision: str, body: bytes, *,
                       create_pr: bool) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        with self._lock:
            base = self._commit(repo_type, repo_id, revision)
            repo = self._repos[(repo_type, repo_id)]
            parent = header.get("parentCommit")
            if parent and not create_pr and parent != base.oid:
                raise _HubError(412, f"A commit has happened since. Please refresh and try again. ({parent})")
            files = dict(base.files)
            for line in lines:
                key, value = line.get("key"), line.get("value") or {}
                if key == "file":
                    content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                        str(value["content"]).encode()
                    files[value["path"]] = _File(len(content), _git_blob_oid(content), content)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if oid not in self._lfs:
                        raise _HubError(422, f"LFS file {value['path']} ({oid}) was never uploaded")
                    size = len(self._lfs[oid])
                    files[value["path"]] = _File(size, _git_blob_oid(_lfs_pointer(oid, size)), lfs_sha256=oid)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HubError(404, f"File not found: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                elif key != "header":
                    raise _HubError(400, f"unknown commit operation {key!r}")
            commit = _Commit(self._new_oid(repo_id, revision), header.get("summary") or "commit",
                             header.get("description") or "", _now_iso(), [base.oid], files)
            repo.commits[commit.oid] = commit
            pr_url = None
            if create_pr:
                repo.pr_count += 1
                repo.refs[f"refs/pr/{repo.pr_count}"] = commit.oid
                pr_url = f"{self._repo_url(repo_type, repo_id)}/discussions/{repo.pr_count}"
            else:
                if revision not in repo.refs:
                    raise _HubError(400, f"cannot commit to {revision!r}: not a branch")
                repo.refs[revision] = commit.oid
        h._json(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": pr_url,
                      "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit.oid}"})

    # --- reads ----------------------------------------------------------------------------------------
    def _entries(self, commit: _Commit, folder: str, recursive: bool) -> Iterator[dict[str, Any]]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        dirs: set[str] = set()
        for path, f in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                if not recursive and depth > 1:
                    break
                d = prefix + "/".join(rest[:depth])
                if d not in dirs:
                    dirs.add(d)
                    yield {"type": "directory", "oid": _tree_oid(commit, d), "size": 0, "path": d}
            if recursive or len(rest) == 1:
                yield f.entry(path)

    def _tree(self, h: _Handler, repo_type: str, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
        commit = self._commit(repo_type, repo_id, revision)
        folder = folder.strip("/")
        if folder and folder in commit.files:
            h._json(200, [commit.files[folder].entry(folder)])
            return
        entries = list(self._entries(commit, folder, recursive))
        if folder and not entries:
            raise _HubError(404, f"Entry not found: {folder}", "EntryNotFound")
        h._json(200, entries)

    def _paths_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> None:
        commit = self._commit(repo_type, repo_id, revision)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(commit.files[path].entry(path))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append({"type": "directory", "oid": _tree_oid(commit, path), "size": 0, "path": path})
        h._json(200, out)

    def _resolve(self, h: _Handler, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self._commit(repo_type, repo_id, revision)
        f = commit.files.get(path)
        if f is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        data = self._content(f)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "ETag": f'"{f.lfs_sha256 or f.blob_oid}"',
                   "Last-Modified": formatdate(usegmt=True),
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if f.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{f.lfs_sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        status = 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[6:].split(",")[0].partition("-")
            if start_s == "":  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(end_s)), len(data) - 1
            else:
                start, end = int(start_s), (int(end_s) if end_s else len(data) - 1)
            if start >= len(data) and len(data) > 0:
                h._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}", **headers},
                        head=method == "HEAD")
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        h._send(status, data, "application/octet-stream", headers, head=method == "HEAD")

    def _validate_yaml(self, h: _Handler, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        content = payload.get("content")
        if not isinstance(content, str):
            h._json(400, {"errors": [{"message": "'content' must be a string"}]})
            return
        metadata, error = _front_matter(content)
        if error is not None:
            h._json(400, {"errors": [{"message": error}], "warnings": []})
            return
        errors = [{"message": f"\"{key}\" must be a string or a list of strings"}
                  for key in ("license", "language", "tags", "task_categories", "size_categories", "pipeline_tag")
                  if metadata and key in metadata and not _str_or_str_list(metadata[key])]
        if errors:
            h._json(400, {"errors": errors, "warnings": []})
            return
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        h._json(200, {"errors": [], "warnings": warnings})


def _tree_oid(commit: _Commit, folder: str) -> str:
    digest = hashlib.sha1(f"{commit.oid}:{folder}".encode())  # noqa: S324 - an id, not security
    return digest.hexdigest() if folder else _EMPTY_TREE


def _str_or_str_list(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _front_matter(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The YAML front matter of a card as a mapping (``None`` when absent), or an error message."""
    import yaml

    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None, None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return None, "the YAML front matter is not closed by a '---' line"
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        return None, f"invalid YAML in the front matter: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"the YAML front matter must be a mapping, got {type(data).__name__}"
    return data, None
