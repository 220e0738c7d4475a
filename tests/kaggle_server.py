"""A loopback stand-in for the Kaggle API, so the real kaggle client can be tested offline.

With KAGGLE_API_ENVIRONMENT=LOCALHOST the kaggle package posts its RPCs to
http://localhost/api/v1/<Service>/<Method> (port 80). This server answers the few the fetch
stage uses the way Kaggle does: JSON for metadata, a 302 redirect to the file for downloads.
Every request is recorded so tests can count them.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PORT = 80  # the LOCALHOST environment has no port setting
API = "/api/v1/"


def port_free(port: int = PORT) -> str:
    """'' when `port` can be bound on 127.0.0.1, else why not (the test's skip reason)."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    except OSError as error:
        return f"cannot bind 127.0.0.1:{port} for the fake Kaggle server ({error.strerror})"
    return ""


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    body: dict
    auth: str  # the Authorization header ('' if none)


@dataclass
class FakeKaggle:
    """Datasets keyed 'owner/slug', competitions by name; values are the archives' bytes."""

    datasets: dict[str, bytes] = field(default_factory=dict)
    competitions: dict[str, bytes] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)  # competitions whose rules are not accepted
    token_user: str = "tester"  # who IntrospectToken says a bearer token belongs to
    # A broken server: every RPC answers 500 with a body that echoes the request's credentials
    # (as a careless proxy or debug page might), to prove the client's errors do not leak them.
    echo_credentials: bool = False
    # Submissions per competition, as Kaggle lists them (camelCase JSON objects: fileName,
    # date, description, status, publicScore, ...), newest first.
    submissions: dict[str, list[dict]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __enter__(self) -> FakeKaggle:
        handler = type("Handler", (_Handler,), {"fake": self})
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", PORT), handler)
        except OSError as error:  # taken since the skip check (another test run, a web server)
            pytest.skip(f"cannot bind 127.0.0.1:{PORT} for the fake Kaggle server ({error})")
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._reply(status, json.dumps(payload).encode(), "application/json")

    def _record(self, body: dict) -> None:
        auth = self.headers.get("Authorization", "")
        self.fake.seen.append(Seen(self.command, self.path, body, auth))

    def do_GET(self) -> None:
        """The redirect targets: /files/datasets/OWNER/SLUG.zip, /files/competitions/NAME.zip."""
        self._record({})
        parts = self.path.split("?")[0].split("/")
        store = {"datasets": self.fake.datasets, "competitions": self.fake.competitions}
        key = "/".join(parts[3:])[: -len(".zip")]
        data = store.get(parts[2], {}).get(key) if len(parts) > 3 else None
        if data is None:
            self._json(404, {"code": 404, "message": "no such file"})
        else:
            self._reply(200, data, "application/zip")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self._record(body)
        method = self.path[len(API):] if self.path.startswith(API) else ""
        handler = getattr(self, "rpc_" + method.replace(".", "_").replace("/", "__"), None)
        if self.fake.echo_credentials:
            self._json(500, {"code": 500, "message": "internal error",
                             "debug": {"authorization": self.headers.get("Authorization", ""),
                                       "body": body}})
        elif handler is None:
            self._json(404, {"code": 404, "message": f"unknown RPC {self.path}"})
        elif not self.headers.get("Authorization"):
            self._json(401, {"code": 401, "message": "Unauthenticated"})
        else:
            handler(body)

    # RPCs, named after their URL (service dots and the slash made into underscores).

    def rpc_security_OAuthService__IntrospectToken(self, body: dict) -> None:
        self._json(200, {"active": True, "username": self.fake.token_user})

    def rpc_datasets_DatasetApiService__GetDatasetMetadata(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.fake.datasets:
            self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
            return
        info = {"datasetSlug": body["datasetSlug"], "ownerUser": body["ownerSlug"],
                "title": "test images", "licenses": [{"name": "CC0-1.0"}]}
        self._json(200, {"info": info})

    def rpc_datasets_DatasetApiService__DownloadDataset(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.fake.datasets:
            self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
        else:
            self._reply(302, b"", "text/plain", {"Location": f"/files/datasets/{ref}.zip"})

    def rpc_competitions_CompetitionApiService__ListSubmissions(self, body: dict) -> None:
        name = body.get("competitionName", "")
        if name not in self.fake.submissions:
            self._json(404, {"code": 404, "message": f"competition {name} not found"})
        else:
            self._json(200, {"submissions": self.fake.submissions[name]})

    def rpc_competitions_CompetitionApiService__DownloadDataFiles(self, body: dict) -> None:
        name = body.get("competitionName", "")
        if name in self.fake.forbidden:
            self._json(403, {"code": 403, "message": "You must accept the rules"})
        elif name not in self.fake.competitions:
            self._json(404, {"code": 404, "message": f"competition {name} not found"})
        else:
            self._reply(302, b"", "text/plain", {"Location": f"/files/competitions/{name}.zip"})
