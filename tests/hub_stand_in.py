"""A local stand-in for the Hugging Face hub's model API, for tests that run the real ``huggingface_hub`` client.

It keeps model repos in memory and answers what the client asks when it creates a repo, uploads files (regular
uploads inlined in the commit, never LFS) and downloads a snapshot: repo info, then a HEAD and a GET per file.
It serves 127.0.0.1 only and stops with its context manager.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import unquote, urlparse


class StandInHub:
    """Repos as ``{repo_id: {"commits": {sha: {path: bytes}}, "refs": {"main": sha}}}``; ``requests`` logs calls."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.endpoint = ""

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][repo["refs"].get(revision, revision)]

    def commit(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}})
        parent = repo["refs"].get(revision)
        merged = {**(repo["commits"][parent] if parent else {}), **files}
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in merged.items()))
                           .encode() + (parent or "").encode()).hexdigest()
        repo["commits"][sha] = merged
        repo["refs"][revision] = sha
        return sha


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value).encode(), headers)

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if self.command == "POST" and path == "/api/repos/create":
                body = json.loads(self._body() or b"{}")
                repo_id = f"{body.get('organization') or 'user'}/{body['name']}" if "/" not in body["name"] \
                    else body["name"]
                hub.repos.setdefault(repo_id, {"commits": {}, "refs": {}})
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if self.command == "POST" and path == "/api/validate-yaml":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                if repo_id not in hub.repos:
                    self._body()
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                if self.command == "POST" and action == "preupload":
                    files = json.loads(self._body())["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if self.command == "POST" and action == "commit":
                    files = {}
                    for line in self._body().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    sha = hub.commit(repo_id, files, revision)
                    return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha})
                if self.command == "GET" and action == "tree":
                    sha = revision.split("/")[0]
                    files = hub.repos[repo_id]["commits"].get(sha) or hub.files(repo_id, sha)
                    return self._json(200, [{"type": "file", "path": name, "size": len(data),
                                             "oid": hashlib.sha1(data).hexdigest()} for name, data in sorted(files.items())])
                if self.command == "GET" and action == "revision":
                    repo = hub.repos[repo_id]
                    sha = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
                    if sha is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return self._json(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                            "siblings": [{"rfilename": name} for name in sorted(repo["commits"][sha])]})
            if len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
                repo_id, revision, name = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                sha = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
                if sha is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                data = repo["commits"][sha].get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{name} does not exist")
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                return self._send(200, data, {"X-Repo-Commit": sha, "ETag": etag}, "application/octet-stream")
            self._body()
            return self._error(404, "NotFound", f"{self.command} {path}: not served by the stand-in hub")

        do_GET = do_HEAD = do_POST = do_PUT = _route

    return Handler


@contextmanager
def stand_in_hub() -> Iterator[StandInHub]:
    """A running stand-in hub on 127.0.0.1; its ``endpoint`` is the URL to set as ``HF_ENDPOINT``."""
    hub = StandInHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
