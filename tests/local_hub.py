"""A hub-compatible HTTP server on 127.0.0.1 for the `ortserve pull` tests (a thread of the test process).

It answers what huggingface_hub asks when `HF_ENDPOINT` points at it:
  GET  /api/models/OWNER/NAME[/revision/REV]   model info: id, sha, siblings (path, size, blob id, lfs)
  GET  /api/models/OWNER/NAME/tree/REV[/PATH]  the file listing (recursive or one level)
  HEAD /OWNER/NAME/resolve/REV/PATH            ETag, X-Repo-Commit, Content-Length (no body)
  GET  /OWNER/NAME/resolve/REV/PATH            the bytes; `Range: bytes=N-` answers 206 from N
Unknown repositories, revisions and files are 404s with the `X-Error-Code` the hub sends (RepoNotFound,
RevisionNotFound, EntryNotFound). REV is `main` or the repository's commit hash. Files are served from the
test session's own folders (the converted tiny models), under the repository paths a real repository has.
`cut_once[path] = n` sends only n bytes of that file's next full GET and drops the connection (a network
failure mid-download); `stall[path]` (an Event) holds that file's
GETs until it is set. `requests` records (method, path, Range header) of every request. `pull_cli` runs
the real CLI against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Repo:
    sha: str
    files: dict[str, Path]  # repository path -> file on disk
    etags: dict[str, str] = field(default_factory=dict)

    def etag(self, path: str) -> str:
        if path not in self.etags:
            self.etags[path] = hashlib.sha256(self.files[path].read_bytes()).hexdigest()
        return self.etags[path]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away (the cut and Ctrl-C tests)
            super().handle_error(request, client_address)


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.cut_once: dict[str, int] = {}
        self.stall: dict[str, threading.Event] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, files: dict[str, Path]) -> str:
        """Publish a repository; returns its commit hash (40 hex digits, from its contents' names and sizes)."""
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].stat().st_size}".encode())
        self.repos[repo_id] = Repo(digest.hexdigest(), dict(files))
        return self.repos[repo_id].sha

    def start(self) -> LocalHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take_cut(self, path: str) -> int | None:
        with self._lock:
            return self.cut_once.pop(path, None)


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # quiet: the tests read `hub.requests`
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _missing(self, code: str, repo: Repo | None = None) -> None:
            headers = {"X-Error-Code": code, "Content-Type": "application/json"}
            if repo is not None:
                headers["X-Repo-Commit"] = repo.sha
            self._send(404, json.dumps({"error": code}).encode(), headers)

        def _repo(self, owner: str, name: str, revision: str) -> Repo | None:
            repo = hub.repos.get(f"{owner}/{name}")
            if repo is None:
                self._missing("RepoNotFound")
                return None
            if revision not in ("main", repo.sha):
                self._missing("RevisionNotFound")
                return None
            return repo

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            hub.requests.append((self.command, url.path, self.headers.get("Range")))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                owner, name, rest = parts[2], parts[3], parts[4:]
                if not rest or rest[0] == "revision":
                    repo = self._repo(owner, name, rest[1] if len(rest) > 1 else "main")
                    if repo is not None:
                        self._model_info(f"{owner}/{name}", repo)
                    return
                if rest[0] == "tree" and len(rest) >= 2:
                    repo = self._repo(owner, name, rest[1])
                    if repo is not None:
                        self._tree(repo, "/".join(rest[2:]), "recursive=true" in url.query.lower())
                    return
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo(parts[0], parts[1], parts[3])
                if repo is not None:
                    self._file(repo, "/".join(parts[4:]))
                return
            self._send(404, b"not found")

        def _entry(self, repo: Repo, path: str) -> dict:
            size = repo.files[path].stat().st_size
            entry = {"type": "file", "path": path, "size": size, "oid": hashlib.sha1(path.encode()).hexdigest()}
            if path.endswith((".onnx", ".data", ".onnx_data", ".safetensors")):
                entry["lfs"] = {"oid": repo.etag(path), "size": size, "pointerSize": 134}
            return entry

        def _model_info(self, repo_id: str, repo: Repo) -> None:
            siblings = []
            for path in sorted(repo.files):
                entry = self._entry(repo, path)
                lfs = entry.get("lfs")  # model info names the LFS hash `sha256`, the tree listing `oid`
                lfs = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]} if lfs else None
                siblings.append({"rfilename": path, "size": entry["size"], "blobId": entry["oid"], "lfs": lfs})
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "siblings": siblings})

        def _tree(self, repo: Repo, folder: str, recursive: bool) -> None:
            prefix = f"{folder}/" if folder else ""
            entries, folders = [], set()
            for path in sorted(repo.files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :]
                if "/" in rest and not recursive:
                    folders.add(prefix + rest.split("/", 1)[0])
                    continue
                for i in range(rest.count("/")):
                    folders.add(prefix + "/".join(rest.split("/")[: i + 1]))
                entries.append(self._entry(repo, path))
            dirs = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders]
            self._json(sorted(dirs, key=lambda d: d["path"]) + entries)

        def _file(self, repo: Repo, path: str) -> None:
            if path not in repo.files:
                self._missing("EntryNotFound", repo)
                return
            data = repo.files[path].read_bytes()
            headers = {
                "ETag": f'"{repo.etag(path)}"',
                "X-Repo-Commit": repo.sha,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and self.command == "GET":
                start = int(ranged[len("bytes=") :].split("-")[0] or 0)
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                headers["Content-Length"] = str(len(data) - start)
                self._send(206, data[start:], headers)
                return
            release = hub.stall.get(path) if self.command == "GET" else None
            if release is not None:  # hold the answer (a slow download) until the test releases it
                release.wait(60)
            cut = hub.take_cut(path) if self.command == "GET" else None
            if cut is not None:  # announce the whole file, send part of it, drop the connection
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            headers["Content-Length"] = str(len(data))
            self._send(200, data, headers)

    return Handler


def pull_cli(home: Path, endpoint: str, *argv: str, runner: Path | None = None, **env: str):
    """`ortserve ARGV` in a subprocess on the store at `home`, its hub at `endpoint`, its HF cache in `home`."""
    command, environment = cli_command(home, endpoint, *argv, runner=runner, **env)
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def cli_command(home: Path, endpoint: str, *argv: str, runner: Path | None = None, **env: str):
    """The command line and environment `pull_cli` runs."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ORTSERVE_", "HF_"))}
    environment.update(
        ORTSERVE_HOME=str(home),
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home / "hf"),
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
        **env,
    )
    command = [sys.executable, *([str(runner)] if runner else ["-m", "ortserve.server.cli"]), *argv]
    return command, environment
