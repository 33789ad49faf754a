"""The studio's web server: the page and its HTTP API, on the standard library's threaded server.

Routes (JSON unless said otherwise)::

    GET  /                          the page
    GET  /api/health                {"status": "ok", "busy": ..., "queued": ...}
    GET  /api/info                  the run, recipe and checkpoint served; defaults; limits; samplers
    GET  /api/samplers              {"samplers": [...], "default": ...}
    POST /api/generate              a request (JSON) -> the generation: outputs with their manifest
                                    lines; ?wait=0: answered at once (202) with the job to poll;
                                    ?format=wav: the first output's WAV, its manifest line in the
                                    X-TTA-Manifest header
    GET  /api/jobs/ID               where a generation stands: queued (position), running (step i of n), done, error
    GET  /api/history               the latest finished generations, newest first
    GET  /api/manifest/ID/K         output K's manifest line (a download)
    GET  /files/NAME                an output this server wrote (audio or spectrogram)

Every refusal is a JSON ``{"error": ...}`` with a 4xx status (503 ``"status": "busy"`` when the
queue is full, with Retry-After); any failure answers the request that met it and the server
goes on serving.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .studio import Busy, RequestError, Studio

log = logging.getLogger("tta.serving")

CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".png": "image/png"}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
_JOB = re.compile(r"[A-Za-z0-9_-]{1,80}")
DRAIN_BYTES = 64 * 2**20  # an oversized body up to this is read and dropped before the refusal; beyond, cut off


def page() -> bytes:
    """The studio's page (one HTML file with its script and style: nothing fetched from elsewhere)."""
    return resources.files(__package__).joinpath("page.html").read_bytes()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    server_version = "tta-serve"
    protocol_version = "HTTP/1.1"

    @property
    def studio(self) -> Studio:
        return self.server.studio  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    # -- answers --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _error(self, code: int, message: str, **extra: Any) -> None:
        self._json(code, {"error": message, **extra}, {"Retry-After": "5"} if code == 503 else None)

    # -- requests -------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, route) -> None:
        """Run a route; whatever it raises becomes an answer, never the end of the server."""
        try:
            url = urlsplit(self.path)
            route(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
        except Busy as exc:
            self.close_connection = self.command == "POST"
            self._error(503, str(exc), status="busy")
        except RequestError as exc:
            self.close_connection = self.close_connection or self.command == "POST"  # a body may be left unread
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left
        except Exception as exc:
            log.exception("request %s %s failed", self.command, self.path)
            try:
                self._error(500, f"the server met an error: {type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _get(self, path: str, query: dict) -> None:
        if path in ("/", "/index.html"):
            return self._send(200, page(), "text/html; charset=utf-8")
        if path == "/api/health":
            return self._json(200, self.studio.health())
        if path == "/api/info":
            return self._json(200, self.studio.info())
        if path == "/api/samplers":
            info = self.studio.info()
            return self._json(200, {"samplers": info["samplers"], "default": info["defaults"]["sampler"]})
        if path == "/api/history":
            return self._json(200, {"generations": self.studio.recent()})
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["api", "jobs"] and _JOB.fullmatch(parts[2]):
            job = self.studio.job(parts[2])
            if job is None:
                raise RequestError(f"no generation {parts[2]!r} on this server (finished ones are kept for the "
                                   f"latest {self.studio.history})", 404)
            return self._json(200, self.studio.view(job))
        if len(parts) == 4 and parts[:2] == ["api", "manifest"] and _JOB.fullmatch(parts[2]) and parts[3].isdigit():
            job = self.studio.job(parts[2])
            k = int(parts[3])
            if job is None or k >= len(job.outputs):
                raise RequestError("no such output on this server", 404)
            row = job.outputs[k]["manifest"]
            stem = row["file"].rsplit(".", 1)[0]
            return self._send(200, (json.dumps(row) + "\n").encode(), "application/json",
                              {"Content-Disposition": f'attachment; filename="{stem}.json"'})
        if len(parts) == 2 and parts[0] == "files" and _FILE_NAME.fullmatch(parts[1]):
            return self._file(parts[1], query)
        raise RequestError(f"nothing at {path}", 404)

    def _file(self, name: str, query: dict) -> None:
        file = self.studio.file(name)  # only names of outputs this server wrote
        if file is None or not file.is_file():
            raise RequestError(f"no file {name!r} on this server", 404)
        data = file.read_bytes()
        kind = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        headers = {"Accept-Ranges": "bytes"}
        if query.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{file.name}"'
        span = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        if span and (span.group(1) or span.group(2)) and data:
            if span.group(1):
                start = int(span.group(1))
                end = min(int(span.group(2)) if span.group(2) else len(data) - 1, len(data) - 1)
            else:  # the last N bytes
                start, end = max(0, len(data) - int(span.group(2))), len(data) - 1
            if start >= len(data) or start > end:
                return self._send(416, b"", kind, {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], kind, headers)
        return self._send(200, data, kind, headers)

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise RequestError("a request body needs a Content-Length", 411) from None
        cap = self.studio.limits.upload_bytes * 4 // 3 + 2**16
        if length < 0 or length > cap:
            self.close_connection = True
            left = length if 0 < length <= DRAIN_BYTES else 0
            while left > 0:  # read (and drop) what the client is sending, so that it reads the answer
                chunk = self.rfile.read(min(left, 2**16))
                if not chunk:
                    break
                left -= len(chunk)
            raise RequestError(f"the request is {length / 2**20:.1f} MB; this server takes at most "
                               f"{cap / 2**20:.1f} MB (uploads up to {self.studio.limits.upload_bytes / 2**20:g} MB)",
                               413)
        raw = self.rfile.read(length)
        kind = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if kind not in ("application/json", "text/plain", ""):
            raise RequestError(f"the request body is JSON (Content-Type: application/json), not {kind}", 415)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"the request body is not JSON: {exc}") from None

    def _post(self, path: str, query: dict) -> None:
        if path != "/api/generate":
            raise RequestError(f"nothing to POST to at {path}; generate with POST /api/generate", 404)
        body = self._body()
        job = self.studio.submit(body)
        if query.get("wait") in ("0", "false", "no"):
            return self._json(202, self.studio.view(job))
        job.done.wait()
        view = self.studio.view(job)
        if job.status != "done":
            return self._json(500, {**view, "error": job.error or "the generation did not finish"})
        if query.get("format") == "wav":
            first = job.outputs[0]
            file = self.studio.file(first["file"])
            line = json.dumps(first["manifest"], ensure_ascii=True)
            return self._send(200, file.read_bytes(), CONTENT_TYPES.get(file.suffix, "application/octet-stream"),
                              {"X-TTA-Manifest": line, "Content-Disposition": f'attachment; filename="{file.name}"'})
        return self._json(200, view)


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # connections the system holds before accepting: a burst of clients is not reset

    def __init__(self, address: tuple[str, int], studio: Studio):
        self.studio = studio
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


def start(studio: Studio, host: str = "127.0.0.1", port: int = 7860) -> tuple[StudioServer, threading.Thread]:
    """Serve ``studio`` on a background thread (``port`` 0: a free one); the server and its thread."""
    server = StudioServer((host, port), studio)
    thread = threading.Thread(target=server.serve_forever, name="tta-serve", daemon=True)
    thread.start()
    return server, thread


def serve_forever(studio: Studio, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C), then let the running generation finish and stop."""
    if not is_loopback(host):
        print(f"warning: serving on {host}, not only this machine: anyone who can reach it can generate "
              "(and use its CPU/GPU); there is no login. Bind to 127.0.0.1 to keep it local.", file=sys.stderr)
    try:
        server = StudioServer((host, port), studio)
    except OSError as exc:
        studio.close()
        from ..errors import UsageError

        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                         "(or --port 0 for a free one)") from None
    info = studio.info()
    print(f"serving {info['recipe']} (run {info['run']}, checkpoint {info['checkpoint']}) at {server.url}",
          flush=True)
    print(f"outputs are written to {info['output_folder']}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping: the running generation finishes first", file=sys.stderr)
    finally:
        server.server_close()
        studio.close()
