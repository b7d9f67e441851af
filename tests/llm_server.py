"""A real chat-completions server on 127.0.0.1 with scripted answers, for tests of the LLM path.

It speaks enough of the OpenAI protocol for the `openai` SDK (POST /v1/chat/completions, JSON in, JSON
out). Each request takes the next item of the script:
    "text"                  200 with that text as the assistant message
    (status, "message")     that HTTP status with an OpenAI-style error body
Every request is recorded (path, parsed JSON body) so tests can read the prompts that were sent.
A request past the end of the script gets 500 "script exhausted", which a test sees as a failure.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedLLM:
    def __init__(self, script: list[str | tuple[int, str]]):
        self.script = list(script)
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _next(self) -> tuple[int, str]:
        with self._lock:
            if not self.script:
                return 500, "script exhausted"
            item = self.script.pop(0)
        return (200, item) if isinstance(item, str) else item

    def start(self) -> ScriptedLLM:
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"unparsed": raw.decode(errors="replace")}
                with fixture._lock:
                    fixture.requests.append({"path": self.path, "body": body})
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    fixture.statuses.append(404)
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                status, text = fixture._next()
                with fixture._lock:
                    fixture.statuses.append(status)
                if status != 200:
                    self._send(status, {"error": {"message": text, "type": "server_error", "code": status}})
                    return
                self._send(200, {
                    "id": f"chatcmpl-{len(fixture.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def user_prompts(self) -> list[str]:
        """The user message of every chat request, in order."""
        out = []
        for r in self.requests:
            msgs = r["body"].get("messages") or []
            out.append(next((m["content"] for m in msgs if m.get("role") == "user"), ""))
        return out
