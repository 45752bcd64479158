"""A loopback stand-in for the Hugging Face Hub: the HTTP endpoints huggingface_hub 2.x calls to create a repository,
commit files (regular uploads only), open a pull request, validate a card and download files back.

Point `HF_ENDPOINT` (and `huggingface_hub.constants.ENDPOINT` in a running process) at `FakeHub.url`. State lives in
memory: `hub.repos[repo_id]` holds the refs (branches and `refs/pr/N`) and the commits with their files' bytes.

    with FakeHub(token="hf_test") as hub:
        ...  # push with HF_ENDPOINT=hub.url, HF_TOKEN=hf_test
        hub.files("user/model")  # {path: bytes} at main

Endpoints (the paths huggingface_hub builds in hf_api.py, _commit_api.py and file_download.py):
    POST /api/repos/create                              create_repo (409 when it exists)
    POST /api/validate-yaml                             the card's metadata check before a commit with README.md
    POST /api/models/{repo}/preupload/{rev}             upload mode per file ("regular": content goes in the commit)
    POST /api/models/{repo}/commit/{rev}[?create_pr=1]  the ndjson commit; with create_pr a new refs/pr/N
    POST /api/models/{repo}/branch/{branch}             create_branch
    GET  /api/models/{repo}[/revision/{rev}]            repo_info / model_info
    GET  /api/whoami-v2                                 whoami
    HEAD|GET /{repo}/resolve/{rev}/{path}               file metadata (X-Repo-Commit, ETag) and download
"""

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_hash(data: bytes) -> str:
    """The git object id of a file's bytes (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict  # path -> bytes (the whole tree at this commit)


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict = field(default_factory=dict)  # "main", other branches and "refs/pr/N" -> commit oid
    commits: dict = field(default_factory=dict)  # oid -> Commit
    pull_requests: list = field(default_factory=list)  # {"num", "ref", "title"}

    def commit(self, parent: str | None, message: str, files: dict) -> str:
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + message.encode() + str(len(self.commits)).encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_hash(files[path]).encode())
        oid = digest.hexdigest()
        self.commits[oid] = Commit(oid, parent, message, dict(files))
        return oid

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)


class FakeHub:
    """The server and its state. `drop_next_commit = True` makes the next commit request lose its connection."""

    def __init__(self, token: str, user: str = "tester"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.drop_next_commit = False
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict:
        """The repository's files (path -> bytes) at a branch, PR ref or commit."""
        commit = self.repos[repo_id].resolve(revision)
        return dict(commit.files) if commit else {}


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        # --- plumbing -------------------------------------------------------------------------------------------
        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None):
            if body is None:
                body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if payload is not None else "application/octet-stream")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None):
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers)

        def _authorised(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _segments(self):
            parts = urlsplit(self.path)
            return [unquote(s) for s in parts.path.split("/")[1:]], parse_qs(parts.query)

        def _repo(self, namespace, name) -> Repo | None:
            repo = hub.repos.get(f"{namespace}/{name}")
            if repo is None or (repo.private and not self._authorised()):
                self._error(404, "Repository not found", "RepoNotFound")
                return None
            return repo

        # --- routing --------------------------------------------------------------------------------------------
        def do_POST(self):
            hub.requests.append(("POST", self.path))
            segments, query = self._segments()
            is_commit = len(segments) >= 6 and segments[:2] == ["api", "models"] and segments[4] == "commit"
            if is_commit and hub.drop_next_commit and self._authorised():
                return self._drop_connection()
            body = self._body()
            if not self._authorised():
                return self._error(401, "Invalid credentials in Authorization header")
            with hub.lock:
                if segments[:3] == ["api", "repos", "create"]:
                    return self._create_repo(json.loads(body))
                if segments[:2] == ["api", "validate-yaml"]:
                    return self._validate_yaml(json.loads(body))
                if len(segments) >= 6 and segments[:2] == ["api", "models"]:
                    namespace, name, action, revision = segments[2], segments[3], segments[4], "/".join(segments[5:])
                    repo = self._repo(namespace, name)
                    if repo is None:
                        return None
                    if action == "commit":
                        return self._commit(repo, revision, query, body)
                    if action == "preupload":
                        return self._preupload(repo, revision, json.loads(body))
                    if action == "branch":
                        return self._create_branch(repo, revision, json.loads(body or b"{}"))
            self._error(404, f"no route for POST {self.path}")

        def _drop_connection(self):
            # A connection that dies mid-push: take part of the request, then close without any answer.
            hub.drop_next_commit = False
            self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1024))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            self.connection.close()

        def do_GET(self):
            hub.requests.append((self.command, self.path))
            segments, _ = self._segments()
            if segments[:2] == ["api", "whoami-v2"]:
                if not self._authorised():
                    return self._error(401, "Invalid credentials in Authorization header")
                return self._send(200, {"type": "user", "name": hub.user, "auth": {"accessToken": {"role": "write"}}})
            if segments[:2] == ["api", "models"] and len(segments) >= 4:
                repo = self._repo(segments[2], segments[3])
                if repo is None:
                    return None
                revision = "/".join(segments[5:]) if len(segments) > 5 and segments[4] == "revision" else "main"
                return self._repo_info(repo, revision)
            if len(segments) >= 5 and segments[2] == "resolve":
                repo = self._repo(segments[0], segments[1])
                if repo is None:
                    return None
                return self._resolve(repo, segments[3], "/".join(segments[4:]))
            self._error(404, f"no route for {self.command} {self.path}")

        do_HEAD = do_GET

        # --- endpoints ------------------------------------------------------------------------------------------
        def _create_repo(self, payload):
            repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
            if repo_id in hub.repos:  # the Hub answers 409 with the repository's url
                message = "You already created this model repo"
                return self._send(409, {"error": message, "url": f"{hub.url}/{repo_id}"}, {"X-Error-Message": message})
            repo = Repo(repo_id, private=payload.get("visibility") == "private")
            attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            repo.refs["main"] = repo.commit(None, "initial commit", {".gitattributes": attributes})
            hub.repos[repo_id] = repo
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, payload):
            content = payload.get("content", "")
            errors = []
            if content.startswith("---"):
                end = content.find("\n---", 3)
                try:
                    metadata = yaml.safe_load(content[3:end]) if end > 0 else None
                except yaml.YAMLError as error:
                    metadata, errors = None, [{"message": f"YAML: {error}"}]
                if end < 0:
                    errors.append({"message": "metadata block is not closed"})
                elif not errors and not isinstance(metadata, dict):
                    errors.append({"message": "metadata must be a mapping"})
                elif not errors:
                    for entry in metadata.get("model-index", []) or []:
                        for result in entry.get("results", []):
                            if not {"task", "dataset", "metrics"} <= set(result):
                                errors.append({"message": "model-index results need task, dataset and metrics"})
            if errors:
                return self._send(400, {"errors": errors, "warnings": []})
            self._send(200, {"errors": [], "warnings": []})

        def _preupload(self, repo, revision, payload):
            commit = repo.resolve(revision) or repo.resolve("main")
            files = []
            for entry in payload["files"]:
                existing = commit.files.get(entry["path"])
                files.append({
                    "path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                    "oid": git_blob_hash(existing) if existing is not None else None,
                })
            self._send(200, {"files": files, "commitOid": commit.oid})

        def _create_branch(self, repo, branch, payload):
            if branch in repo.refs:
                return self._error(409, "Reference already exists")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "Invalid rev id", "RevisionNotFound")
            repo.refs[branch] = start.oid
            self._send(200, {})

        def _commit(self, repo, revision, query, body):
            if revision not in repo.refs:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
            parent = repo.commits[repo.refs[revision]]
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        return self._error(400, f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:  # lfsFile / copies: this server only speaks regular uploads
                    return self._error(400, f"unsupported commit operation {key!r}")
            oid = repo.commit(parent.oid, header.get("summary", ""), files)
            answer = {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid, "success": True}
            if query.get("create_pr") == ["1"]:
                number = len(repo.pull_requests) + 1
                ref = f"refs/pr/{number}"
                repo.refs[ref] = oid
                repo.pull_requests.append({"num": number, "ref": ref, "title": header.get("summary", "")})
                answer["pullRequestUrl"] = f"{hub.url}/{repo.repo_id}/discussions/{number}"
            else:
                repo.refs[revision] = oid
                answer["pullRequestUrl"] = None
            self._send(200, answer)

        def _repo_info(self, repo, revision):
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            self._send(200, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            })

        def _resolve(self, repo, revision, path):
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            data = commit.files.get(path)
            if data is None:
                return self._error(404, f"Entry not found: {path}", "EntryNotFound")
            self._send(200, body=data, headers={"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_hash(data)}"'})

    return Handler
