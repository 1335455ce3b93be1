"""Test doubles that ship with the package: the test suite and the web app's fake mode use these, and only these.

* :class:`HashingEmbedder` / :class:`FakeEmbedder`: character bigrams hashed into a small normalised vector
  (texts sharing words get similar vectors); deterministic, loads nothing.
* :class:`FakeChatModel`: a scripted chat model. Given a ``reply`` (a string, or a function of the messages)
  it returns that; without one it behaves like a copying model: its reply is the first sentence of the
  last message, cited ``[1]`` when the call allows citations (``citable`` > 0). It never looks at which
  prompt it was given, so changing a prompt cannot change what a test exercises without the test saying so.

Both follow the library's protocols (:class:`ragbot.embedder.Embedder`, :class:`ragbot.llm.ChatModel`).
The web app names them with :data:`FAKE_EMBEDDER` and :data:`FAKE_LLM`, so an index built with fakes is
refused by the real models (and the reverse) with the usual "re-ingest" message.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ragbot.settings import REFUSAL
from ragbot.types import Message

FAKE_EMBEDDER = "ui-fake-embedder"
FAKE_LLM = "ui-fake-llm"


class HashingEmbedder:
    """Character bigrams hashed into a small normalised vector: texts sharing words get similar vectors.

    Follows :class:`ragbot.embedder.Embedder`; loads nothing and is deterministic.
    """

    def __init__(self, dim: int = 64, name: str = "hashing-embedder") -> None:
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self._dim, dtype=np.float32)
        for a, b in zip(text, text[1:]):
            v[int(hashlib.md5((a + b).encode()).hexdigest()[:8], 16) % self._dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self._dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)


class FakeEmbedder(HashingEmbedder):
    """The hashing embedder under a test name, recording what it was asked to embed (``calls``, ``embedded``)."""

    def __init__(self, dim: int = 64, name: str = "fake-embedder") -> None:
        super().__init__(dim, name)
        self.calls = 0
        self.embedded: list[str] = []

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        return super().embed_documents(texts)


Reply = str | Callable[[list[Message]], str]
_FIRST_SENTENCE = re.compile(r"[^。！？!?\n]*[。！？!?]")


def copy_first_sentence(messages: list[Message], citable: int = 0) -> str:
    """The copying model's reply: the first sentence of the last message (``[1]`` after it when it may cite),
    or the refusal phrase when that message holds no sentence."""
    found = _FIRST_SENTENCE.search(messages[-1]["content"]) if messages else None
    sentence = found.group(0).strip() if found else ""
    if not sentence:
        return REFUSAL
    return f"{sentence[:-1]} [1]{sentence[-1]}" if citable else sentence


class FakeChatModel:
    """A chat model that returns ``reply`` (a string, or ``reply(messages)``), or copies when ``reply`` is None.

    It records every conversation it was given (``messages``) and the ``citable`` of each call, and streams in
    pieces of ``piece_chars`` characters, so citation markers arrive split across pieces.
    """

    def __init__(self, reply: Reply | None = None, *, name: str = "fake-llm", piece_chars: int = 3) -> None:
        self.reply = reply
        self.name = name
        self.piece_chars = piece_chars
        self.messages: list[list[Message]] = []
        self.citable: list[int] = []
        self.questions: list[str] = []  # the ``question`` each call was given (the echo constraint's)

    def _text(self, messages: list[Message], citable: int) -> str:
        self.messages.append(messages)
        self.citable.append(citable)
        if self.reply is None:
            return copy_first_sentence(messages, citable)
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0, question: str = "") -> str:
        self.questions.append(question)
        return self._text(messages, citable)

    def stream(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0, question: str = "") -> Iterator[str]:
        self.questions.append(question)
        text = self._text(messages, citable)
        for i in range(0, len(text), self.piece_chars):
            yield text[i:i + self.piece_chars]


class FakeOpenAIServer:
    """A real local HTTP server speaking the OpenAI API: ``/v1/models``, streaming ``/v1/chat/completions`` and
    ``/v1/embeddings`` (vectors of :class:`HashingEmbedder`, scaled so the client must normalise them). Its
    attributes set how it behaves (what it streams, how slowly, which status it answers); it records what it got.
    Requests need ``Authorization: Bearer`` :attr:`KEY`. ``close()`` stops it.
    """

    KEY = "sk-test-secret-4242"

    def __init__(self) -> None:
        self.pieces = ["LoRA 只训练", "低秩矩阵 [1]", "。"]
        self.finish = "stop"
        self.models = [{"id": "qwen", "object": "model", "max_model_len": 4096}]
        self.first_delay = 0.0  # seconds before the first piece
        self.gap = 0.0  # seconds between pieces
        self.status = 200  # answer chat requests with this status (and an error body) instead
        self.error_message = ""
        self.drop_after = None  # close the connection after this many pieces
        self.fail_first = 0  # answer the first N chat requests with HTTP 503
        self.streamed_errors_close = False  # a streamed request that fails gets a 200 and an empty stream
        self.requests: list[dict] = []  # chat requests
        self.embedded: list[list[str]] = []  # the texts of each embeddings request
        self.embedder = HashingEmbedder(dim=32)
        self.headers: list[str] = []  # the Authorization header of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                server.headers.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Bearer {server.KEY}":
                    # echoes what it got, as some servers do: the client must not pass it on
                    got = str(self.headers.get("Authorization"))
                    self._json(401, {"error": {"message": f"Invalid API Key {got}", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": server.models})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                if self.path.rstrip("/").endswith("/embeddings"):
                    server.embedded.append(list(body["input"]))
                    data = [{"object": "embedding", "index": i, "embedding": (3 * server.embedder._vec(t)).tolist()}
                            for i, t in enumerate(body["input"])]
                    self._json(200, {"object": "list", "data": data[::-1], "model": body["model"]})  # any order
                    return
                with server._lock:
                    server.requests.append(body)
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._chat(body, n)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _chat(self, body: dict, n: int) -> None:
                if n <= server.fail_first:
                    self._json(503, {"error": {"message": "loading model"}})
                    return
                if body["model"] not in [m["id"] for m in server.models]:
                    self._json(404, {"error": {"message": f"model {body['model']} not found"}})
                    return
                if server.status != 200 and server.streamed_errors_close and body.get("stream"):
                    # llama_cpp.server: the 200 has gone out, then the stream just ends
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.status != 200:
                    self._json(server.status, {"error": {"message": server.error_message, "type": "invalid_request_error"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                time.sleep(server.first_delay)
                for i, piece in enumerate(server.pieces):
                    if server.drop_after is not None and i >= server.drop_after:
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    if i:
                        time.sleep(server.gap)
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": server.finish}]})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _event(self, chunk: dict) -> None:
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "qwen", **chunk}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
