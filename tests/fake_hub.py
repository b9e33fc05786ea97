"""A fake Hugging Face hub on localhost, for tests without a network.

`FakeHub` serves model repositories from local folders in the hub's URL layout, enough for
huggingface_hub's `model_info`, `list_repo_tree`, `hf_hub_download` and `snapshot_download`:

    GET  /api/models/{repo}/revision/{rev}        {"id", "sha", "siblings": [{"rfilename"}]}
    GET  /api/models/{repo}/refs                  {"branches": [{"name", "ref", "targetCommit"}], ...}
    GET  /api/models/{repo}/tree/{rev}[/{path}]   [{"type": "file", "path", "size", "oid"}, ...]
    HEAD|GET /{repo}/resolve/{rev}/{file}          the bytes, with ETag, X-Repo-Commit, Content-Length

A revision is a branch name or its commit sha (sha1 of "repo@branch"). Unknown repos, revisions
and files answer 404 with the X-Error-Code the client maps to its errors. Every request path is
logged in `requests` so tests can check what was (not) downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, Path]] = {}  # repo -> branch -> folder
        self.requests: list[tuple[str, str]] = []  # (method, path)
        # "<file>" or "<branch>/<file>" -> bytes sent before the connection drops (GET only)
        self.cut: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, branch: str, folder: str | Path) -> str:
        """Serve `folder` as `branch` of `repo`; returns the branch's commit sha."""
        self.repos.setdefault(repo, {})[branch] = Path(folder)
        return self.sha(repo, branch)

    @staticmethod
    def sha(repo: str, branch: str) -> str:
        return hashlib.sha1(f"{repo}@{branch}".encode()).hexdigest()

    def files(self, repo: str, branch: str) -> list[str]:
        root = self.repos[repo][branch]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def _resolve(self, repo: str, rev: str) -> str | None:
        for branch in self.repos.get(repo, {}):
            if rev in (branch, self.sha(repo, branch)):
                return branch
        return None

    # --- server ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 5 and parts[4] == "refs":  # list_repo_refs
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
                return
            data = {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": self.sha(repo, b)}
                                 for b in sorted(self.repos[repo])], "converts": [], "tags": []}
            self._send(h, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)
            return
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo, rev = "/".join(parts[2:4]), parts[5]
            branch = self._find(h, repo, rev)
            if branch is None:
                return
            if parts[4] == "revision":
                data = {"id": repo, "modelId": repo, "sha": self.sha(repo, branch), "private": False,
                        "siblings": [{"rfilename": f} for f in self.files(repo, branch)]}
            else:
                prefix = "/".join(parts[6:])
                root = self.repos[repo][branch]
                data = [{"type": "file", "path": f, "size": (root / f).stat().st_size,
                         "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()}
                        for f in self.files(repo, branch) if f.startswith(prefix)]
            self._send(h, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            branch = self._find(h, repo, rev)
            if branch is None:
                return
            f = self.repos[repo][branch] / name
            if not f.is_file():
                self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                return
            data = f.read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": self.sha(repo, branch),
                       "Content-Type": "application/octet-stream"}
            cut = next((self.cut[k] for k in (f"{branch}/{name}", name) if k in self.cut), None)
            if body and cut is not None:  # announce every byte, send a part, drop the connection
                self._send_cut(h, data, headers, cut)
                return
            self._send(h, 200, data, headers, body)
            return
        self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)

    @staticmethod
    def _send_cut(h: BaseHTTPRequestHandler, data: bytes, headers: dict, n: int) -> None:
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:n])
        h.wfile.flush()
        h.close_connection = True

    def _find(self, h, repo: str, rev: str) -> str | None:
        if repo not in self.repos:
            self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, True)
            return None
        branch = self._resolve(repo, rev)
        if branch is None:
            self._send(h, 404, b"", {"X-Error-Code": "RevisionNotFound"}, True)
        return branch

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
