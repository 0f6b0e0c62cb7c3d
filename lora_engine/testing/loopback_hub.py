"""A loopback fake of the Hugging Face Hub, for tests.

A real HTTP/1.1 server on 127.0.0.1 that the unmodified ``huggingface_hub``
client talks to through its ``endpoint``.  Stdlib + PyYAML only: it imports
neither huggingface_hub nor torch.

Repositories live on disk and are read at request time, so a test may add,
change or delete them while the server runs::

    root/{owner}/{name}/README.md     model card (YAML front matter + body)
    root/{owner}/{name}/<any files>   served verbatim (subfolders allowed)
    root/{owner}/{name}/.hub.json     metadata that is not in files: likes,
                                      downloads, created_at, last_modified,
                                      trending_score, gated (false|"auto"|
                                      "manual"), private, disabled,
                                      pipeline_tag, library_name

The repo sha is a deterministic 40-hex hash over (relative path, bytes) of
every file but ``.hub.json``: changing a file moves the revision.  Revisions
``main`` and the full sha resolve; anything else is ``RevisionNotFound``.

Endpoints: ``GET /api/models``, ``GET /api/models/{repo}[/revision/{rev}]``,
``GET /api/models/{repo}/tree/{rev}[/{path}]``, ``HEAD|GET
/{repo}/resolve/{rev}/{path}``.  Errors carry ``X-Error-Code`` /
``X-Error-Message`` headers and a JSON ``{"error": ...}`` body, as the Hub's.

Knobs (plain attributes, read at request time, settable any time):
``delay_s``, ``delay_paths``, ``fail_status``, ``fail_paths``,
``cut_after_bytes``, ``cut_times``, ``page_size``.  Every request is logged
to ``requests`` as ``(method, path_with_query, headers)`` (header names
lower-cased).  ``reset()`` clears knobs and log.

A slow Hub without timing: ``hold(paths)`` keeps the matching requests
unanswered until ``release()``, and ``wait_held(n, timeout)`` waits until
``n`` of them are being held, so a test can act while the Hub is known not
to have answered (rather than hope a delay is long enough).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import yaml

__all__ = ["FakeHub", "write_repo", "repo_sha", "file_etag", "read_card", "hub_tags"]

META_FILE = ".hub.json"
#: The longest a held request waits for ``release()`` (seconds): a test that forgets to release cannot wedge the
#: server for the rest of the session.
HOLD_LIMIT_S = 300.0
DEFAULT_PAGE_SIZE = 1000
# Files the Hub would store with Git LFS: their ETag is the sha256 of the content.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".ckpt",
    ".pt",
    ".pth",
    ".onnx",
    ".msgpack",
    ".h5",
    ".gguf",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".gif",
    ".zip",
    ".tar",
    ".gz",
    ".npy",
    ".pkl",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
SORT_KEYS = {
    "downloads": "downloads",
    "likes": "likes",
    "lastModified": "lastModified",
    "last_modified": "lastModified",
    "createdAt": "createdAt",
    "created_at": "createdAt",
    "trendingScore": "trendingScore",
    "trending_score": "trendingScore",
}
LIST_BASE_FIELDS = (
    "_id",
    "id",
    "likes",
    "trendingScore",
    "private",
    "downloads",
    "tags",
    "pipeline_tag",
    "library_name",
    "createdAt",
    "modelId",
)
LIST_FULL_FIELDS = ("author", "sha", "lastModified", "gated", "disabled", "siblings", "widgetData")


# --------------------------------------------------------------------------- repo storage


def write_repo(
    root: Path | str,
    repo_id: str,
    files: dict[str, bytes | str] | None = None,
    card: dict | None = None,
    card_body: str = "",
    **meta: Any,
) -> Path:
    """Create or update ``root/{repo_id}``; return its folder.

    ``card`` (if given) becomes README.md's YAML front matter, followed by
    ``card_body``.  ``files`` maps repo-relative paths to content (str is
    written as UTF-8).  ``meta`` (likes, downloads, created_at, last_modified,
    trending_score, gated, private, disabled, pipeline_tag, library_name) is
    merged into any existing ``.hub.json``.  Existing files are kept.
    """
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must be 'owner/name', got {repo_id!r}")
    folder = Path(root) / repo_id
    folder.mkdir(parents=True, exist_ok=True)
    if card is not None:
        front = yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
        (folder / "README.md").write_text(f"---\n{front}---\n{card_body}", encoding="utf-8")
    for rel, content in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        target.write_bytes(content)
    meta_path = folder / META_FILE
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta or not meta_path.exists():
        old.update(meta)
        meta_path.write_text(json.dumps(old, indent=1, sort_keys=True))
    return folder


def _repo_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != META_FILE
    )


def repo_sha(root: Path | str, repo_id: str) -> str:
    """The 40-hex revision of ``root/{repo_id}`` as the server reports it."""
    folder = Path(root) / repo_id
    h = hashlib.sha1(b"fake-hub-repo\0")
    for rel in _repo_files(folder):
        data = (folder / rel).read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def _is_lfs(rel: str, size: int) -> bool:
    return rel.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def file_etag(rel: str, data: bytes) -> str:
    """Unquoted ETag the server sends: sha256 for LFS-like files, git blob sha1 otherwise."""
    if _is_lfs(rel, len(data)):
        return hashlib.sha256(data).hexdigest()
    return _git_blob_sha1(data)


def read_card(text: str) -> dict:
    """YAML front matter of a README (empty dict if none or invalid)."""
    if not text.startswith("---"):
        return {}
    lines = text.splitlines()
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            try:
                data = yaml.safe_load("\n".join(lines[1:i]))
            except yaml.YAMLError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def hub_tags(card: dict, files: list[str], library_name: str | None, pipeline_tag: str | None) -> list[str]:
    """Tags the way the Hub derives them from a card and a file list."""
    card_tags = [str(t) for t in _as_list(card.get("tags"))]
    tags: list[str] = []
    if library_name:
        tags.append(str(library_name))
    tags += card_tags
    if any(f.endswith(".safetensors") for f in files):
        tags.append("safetensors")
    if pipeline_tag:
        tags.append(str(pipeline_tag))
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))]
    bases = [str(b) for b in _as_list(card.get("base_model"))]
    relation = card.get("base_model_relation")
    if relation is None and "lora" in card_tags:
        relation = "adapter"
    for base in bases:
        tags.append(f"base_model:{base}")
        if relation:
            tags.append(f"base_model:{relation}:{base}")
    for lic in _as_list(card.get("license")):
        tags.append(f"license:{lic}")
    tags.append("region:us")
    seen: set[str] = set()
    return [t for t in tags if not (t in seen or seen.add(t))]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Repo:
    """A snapshot of one on-disk repo, read when a request comes in."""

    def __init__(self, root: Path, repo_id: str):
        self.id = repo_id
        self.author = repo_id.split("/")[0]
        self.folder = root / repo_id
        meta_path = self.folder / META_FILE
        self.meta: dict = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.files = _repo_files(self.folder)
        readme = self.folder / "README.md"
        self.card = read_card(readme.read_text(encoding="utf-8", errors="replace")) if readme.exists() else {}
        self.library_name = self.meta.get("library_name", self.card.get("library_name"))
        self.pipeline_tag = self.meta.get("pipeline_tag", self.card.get("pipeline_tag"))
        self.gated = self.meta.get("gated", False) or False
        self.private = bool(self.meta.get("private", False))
        self.tags = hub_tags(self.card, self.files, self.library_name, self.pipeline_tag)
        mtimes = [(self.folder / f).stat().st_mtime for f in self.files] or [0.0]
        self.last_modified = self.meta.get("last_modified") or _iso(max(mtimes))
        self.created_at = self.meta.get("created_at") or _iso(min(mtimes))
        self._sha: str | None = None

    @property
    def sha(self) -> str:
        if self._sha is None:
            self._sha = repo_sha(self.folder.parent.parent, self.id)
        return self._sha

    def sibling(self, rel: str, blobs: bool) -> dict:
        if not blobs:
            return {"rfilename": rel}
        data = (self.folder / rel).read_bytes()
        out: dict[str, Any] = {"rfilename": rel, "size": len(data)}
        if _is_lfs(rel, len(data)):
            pointer = _lfs_pointer(data)
            out["blobId"] = _git_blob_sha1(pointer)
            out["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": len(pointer)}
        else:
            out["blobId"] = _git_blob_sha1(data)
        return out

    def info(self, blobs: bool = False, with_sha: bool = True) -> dict:
        d: dict[str, Any] = {
            "_id": hashlib.md5(self.id.encode()).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "author": self.author,
            "lastModified": self.last_modified,
            "createdAt": self.created_at,
            "private": self.private,
            "gated": self.gated,
            "disabled": bool(self.meta.get("disabled", False)),
            "downloads": int(self.meta.get("downloads", 0)),
            "likes": int(self.meta.get("likes", 0)),
            "trendingScore": self.meta.get("trending_score", 0),
            "library_name": self.library_name,
            "pipeline_tag": self.pipeline_tag,
            "tags": self.tags,
            "cardData": self.card,
            "siblings": [self.sibling(f, blobs) for f in self.files],
            "spaces": [],
            "usedStorage": sum((self.folder / f).stat().st_size for f in self.files),
        }
        if "widget" in self.card:
            d["widgetData"] = self.card["widget"]
        if with_sha:
            d["sha"] = self.sha
        for key in ("library_name", "pipeline_tag"):
            if d[key] is None:
                del d[key]
        return d


# --------------------------------------------------------------------------- HTTP


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: FakeHub

    def handle_error(self, request, client_address):  # noqa: D401 - silence tracebacks on stderr
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # ---- plumbing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub._log(method, self.path, headers)
        hub._hold_if_asked(self.path)
        try:
            delay = hub.delay_s
            if delay and (hub.delay_paths is None or re.search(hub.delay_paths, self.path)):
                time.sleep(delay)  # the slow-Hub knob: the delay is what the tests using it are about
            status = hub.fail_status
            if status is not None and (hub.fail_paths is None or re.search(hub.fail_paths, self.path)):
                raise _HubError(int(status), f"Injected failure {status}")
            self._route(method)
        except _HubError as e:
            self._send_error(method, e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # keep the server alive, report as a 500
            try:
                self._send_error(method, _HubError(500, f"fake hub crashed: {type(e).__name__}: {e}"))
            except OSError:
                self.close_connection = True

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict | None = None,
        method: str = "GET",
        ctype: str = "application/json; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _send_json(self, method: str, payload: Any, headers: dict | None = None, status: int = 200) -> None:
        body = json.dumps(payload, default=str).encode("utf-8")
        self._send(status, body, headers, method)

    def _send_error(self, method: str, e: _HubError) -> None:
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        headers["X-Error-Message"] = e.message
        self._send_json(method, {"error": e.message}, headers, status=e.status)

    # ---- routing

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        query = parse_qsl(split.query, keep_blank_values=True)
        if method not in ("GET", "HEAD"):
            raise _HubError(405, f"Method {method} not supported by the fake hub")
        if segs[:2] == ["api", "models"]:
            rest = segs[2:]
            if not rest or rest == [""]:
                return self._list_models(method, query)
            if len(rest) == 2:
                return self._model_info(method, rest[0] + "/" + rest[1], "main", query)
            if len(rest) >= 4 and rest[2] == "revision":
                return self._model_info(method, rest[0] + "/" + rest[1], "/".join(rest[3:]), query)
            if len(rest) >= 4 and rest[2] == "tree":
                return self._tree(method, rest[0] + "/" + rest[1], rest[3], "/".join(rest[4:]), query)
        if len(segs) >= 5 and segs[2] == "resolve":
            return self._resolve(method, segs[0] + "/" + segs[1], segs[3], "/".join(segs[4:]))
        raise _HubError(404, "Not Found")

    def _repo(self, repo_id: str, revision: str | None = None) -> _Repo:
        hub = self.server.hub
        folder = hub.root / repo_id
        if repo_id.count("/") != 1 or not folder.is_dir() or repo_id.startswith((".", "/")) or ".." in repo_id:
            raise _HubError(401, "Repository not found", "RepoNotFound")
        repo = _Repo(hub.root, repo_id)
        if repo.private and "authorization" not in {k.lower() for k in self.headers.keys()}:
            raise _HubError(401, "Repository not found", "RepoNotFound")
        if revision is not None and revision not in ("main", repo.sha):
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo

    def _model_info(self, method: str, repo_id: str, revision: str, query: list) -> None:
        repo = self._repo(repo_id, revision)
        q = dict(query)
        blobs = q.get("blobs", "").lower() == "true"
        info = repo.info(blobs=blobs)
        expand = [v for k, v in query if k in ("expand", "expand[]")]
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        self._send_json(method, info)

    def _tree(self, method: str, repo_id: str, revision: str, path: str, query: list) -> None:
        repo = self._repo(repo_id, revision)
        recursive = dict(query).get("recursive", "").lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(f.startswith(prefix) for f in repo.files):
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        entries: dict[str, dict] = {}
        for f in repo.files:
            if not f.startswith(prefix):
                continue
            parts = f[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                d = prefix + "/".join(parts[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(
                        d, {"type": "directory", "oid": _git_blob_sha1(d.encode()), "size": 0, "path": d}
                    )
                if not recursive:
                    break
            if len(parts) == 1 or recursive:
                s = repo.sibling(f, blobs=True)
                e: dict[str, Any] = {"type": "file", "oid": s["blobId"], "size": s["size"], "path": f}
                if "lfs" in s:
                    e["lfs"] = {
                        "oid": s["lfs"]["sha256"],
                        "size": s["lfs"]["size"],
                        "pointerSize": s["lfs"]["pointerSize"],
                    }
                entries[f] = e
        self._send_json(method, [entries[k] for k in sorted(entries)])

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id, None)
        if repo.gated and "authorization" not in {k.lower() for k in self.headers.keys()}:
            raise _HubError(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                "GatedRepo",
            )
        if revision not in ("main", repo.sha):
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        sha = repo.sha
        if path not in repo.files:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = (repo.folder / path).read_bytes()
        size = len(data)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{file_etag(path, data)}"',
            "Accept-Ranges": "bytes",
        }
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                raise _HubError(416, f"Range not satisfiable: {rng}", None, {"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start : end + 1]
        ctype = "application/octet-stream"
        if path.endswith((".md", ".txt", ".json", ".yaml", ".yml")):
            ctype = "text/plain; charset=utf-8"
        if method == "HEAD":
            return self._send(status, body, headers, "HEAD", ctype)
        hub = self.server.hub
        cut_at = hub._take_cut(start, end)
        if cut_at is None:
            return self._send(status, body, headers, "GET", ctype)
        # Advertise the full body, deliver bytes below file offset `cut_at` only, then hang up.
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[: max(0, cut_at - start)])
        self.wfile.flush()
        self.close_connection = True

    def _list_models(self, method: str, query: list) -> None:
        hub = self.server.hub
        multi: dict[str, list[str]] = {}
        for k, v in query:
            multi.setdefault(k.removesuffix("[]"), []).append(v)
        one = {k: v[-1] for k, v in multi.items()}
        authed = "authorization" in {k.lower() for k in self.headers.keys()}

        sort = one.get("sort")
        if sort is not None and sort not in SORT_KEYS:
            raise _HubError(400, f"Invalid sort parameter: {sort}", "BadRequest")
        try:
            limit = int(one["limit"]) if "limit" in one else None
            offset = int(base64.urlsafe_b64decode(one["cursor"].encode()).decode()) if "cursor" in one else 0
        except ValueError as e:
            raise _HubError(400, f"Bad pagination parameter: {e}", "BadRequest") from e

        filters = multi.get("filter", [])
        search = one.get("search", "").lower()
        author = one.get("author", "").lower()
        pipeline = one.get("pipeline_tag")
        gated = one.get("gated")

        repos: list[_Repo] = []
        if hub.root.is_dir():
            for owner in sorted(p for p in hub.root.iterdir() if p.is_dir()):
                for folder in sorted(p for p in owner.iterdir() if p.is_dir()):
                    repo = _Repo(hub.root, f"{owner.name}/{folder.name}")
                    if repo.private and not authed:
                        continue
                    facets = set(repo.tags) | {repo.library_name, repo.pipeline_tag} - {None}
                    if any(f not in facets for f in filters):
                        continue
                    if search and search not in repo.id.lower():
                        continue
                    if author and repo.author.lower() != author:
                        continue
                    if pipeline and repo.pipeline_tag != pipeline:
                        continue
                    if gated is not None and bool(repo.gated) != (gated.lower() == "true"):
                        continue
                    repos.append(repo)

        infos = [r.info(with_sha=False) for r in repos]
        if sort is not None:
            key = SORT_KEYS[sort]
            descending = one.get("direction", "-1") != "1"
            infos.sort(key=lambda d: d["id"])
            infos.sort(key=lambda d: d[key], reverse=descending)

        page = hub.page_size or min(limit or DEFAULT_PAGE_SIZE, DEFAULT_PAGE_SIZE)
        chunk = infos[offset : offset + page]
        full = one.get("full", "").lower() == "true"
        card = one.get("cardData", "").lower() == "true"
        expand = multi.get("expand", [])
        out = []
        for d in chunk:
            if expand:
                fields = {"_id", "id", *expand}
            else:
                fields = set(LIST_BASE_FIELDS)
                if full:
                    fields |= set(LIST_FULL_FIELDS)
                if card:
                    fields.add("cardData")
            if "sha" in fields:
                d["sha"] = repo_sha(hub.root, d["id"])
            out.append({k: v for k, v in d.items() if k in fields})

        headers = {}
        if offset + page < len(infos):
            cursor = base64.urlsafe_b64encode(str(offset + page).encode()).decode()
            next_query = [(k, v) for k, v in query if k != "cursor"] + [("cursor", cursor)]
            headers["Link"] = f'<{hub.url}/api/models?{urlencode(next_query)}>; rel="next"'
        self._send_json(method, out, headers)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":  # suffix range: last N bytes
        n = int(m.group(2))
        if n == 0:
            return None
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    end = min(end, size - 1)
    if start >= size or start > end:
        return None
    return start, end


# --------------------------------------------------------------------------- public server


class FakeHub:
    """Loopback fake Hub.  ``with FakeHub(root) as hub: HfApi(endpoint=hub.url)...``"""

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._gate = threading.Condition()  # guards hold_paths, _holding and _releases
        self.hold_paths: str | None = None  # regex: matching requests wait, unanswered, until release()
        self._holding = 0  # requests held now
        self._releases = 0  # release() calls so far: a held request waits for the next one
        self.reset()

    # knobs ------------------------------------------------------------------

    def reset(self) -> None:
        """Clear every knob and the request log."""
        self.delay_s: float = 0.0  # sleep before answering each request
        self.delay_paths: str | None = None  # regex (re.search on path+query): only delay those
        self.fail_status: int | None = None  # answer with this status + JSON error
        self.fail_paths: str | None = None  # regex: only fail those
        self.cut_after_bytes: int | None = None  # GET resolve: no byte at file offset >= N is sent
        self.cut_times: int | None = None  # how many GETs to cut (None = every one)
        self.page_size: int | None = None  # force /api/models page size
        self.release()  # hold_paths = None; anything still held goes on
        with self._lock:
            self.requests.clear()

    def hold(self, paths: str) -> None:
        """Keep requests whose path+query matches the regex ``paths`` unanswered until :meth:`release`."""
        with self._gate:
            self.hold_paths = paths

    def release(self) -> None:
        """Answer every held request, and hold no more (``hold_paths`` back to None)."""
        with self._gate:
            self.hold_paths = None
            self._releases += 1
            self._gate.notify_all()

    def held(self) -> int:
        """How many requests are being held now."""
        with self._gate:
            return self._holding

    def wait_held(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` requests are being held; False if ``timeout`` seconds pass first."""
        with self._gate:
            return self._gate.wait_for(lambda: self._holding >= count, timeout)

    def _hold_if_asked(self, path: str) -> None:
        with self._gate:
            if self.hold_paths is None or not re.search(self.hold_paths, path):
                return
            releases = self._releases
            self._holding += 1
            self._gate.notify_all()
            try:
                self._gate.wait_for(lambda: self._releases != releases, HOLD_LIMIT_S)
            finally:
                self._holding -= 1

    def _log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _take_cut(self, start: int, end: int) -> int | None:
        with self._lock:
            n = self.cut_after_bytes
            if n is None or end < n:
                return None
            if self.cut_times is not None:
                if self.cut_times <= 0:
                    return None
                self.cut_times -= 1
            return n

    def requests_matching(self, method: str | None = None, pattern: str | None = None) -> list[tuple[str, str, dict]]:
        """Logged requests filtered by method and a regex searched in path+query."""
        with self._lock:
            log = list(self.requests)
        return [r for r in log if (method is None or r[0] == method) and (pattern is None or re.search(pattern, r[1]))]

    def sha(self, repo_id: str) -> str:
        """Current revision of a repo."""
        return repo_sha(self.root, repo_id)

    # lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = _Server((self.host, self.port), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_for_this_process(folder: Path) -> FakeHub:
    """Start a fake Hub serving ``folder/hub`` and point this process's huggingface_hub settings at it.

    huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is first imported,
    so this must run before anything imports it (the test session's conftest, the benchmarks' ``main``).
    Child processes (Ray replicas) inherit the variables. The caller stops the hub.
    """
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before HF_ENDPOINT was set")
    hub = FakeHub(Path(folder) / "hub")
    os.environ["HF_ENDPOINT"] = hub.start()
    os.environ["HF_HOME"] = str(Path(folder) / "hf_home")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.pop("HF_TOKEN", None)
    return hub
