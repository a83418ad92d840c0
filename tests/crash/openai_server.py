"""A scripted, OpenAI-compatible chat completions server on 127.0.0.1 for crash tests.

It answers `POST /v1/chat/completions`, plain or streamed (SSE), from a script: the response to a
request is chosen by its *turn*, the number of assistant messages already in the conversation, so a
request re-sent by a recovered run gets the same answer as the first time. Each script entry is either
`{"tool_calls": [{"name": ..., "args": {...}}]}` or `{"text": "..."}`; in a text, `{tool_result}` is
replaced by the content of the conversation's last tool message.

Every request is counted per turn (received, and completed when the whole answer was written), readable
with `stats()` in-process or `GET /stats`. `delay_turns` holds the *first* request of those turns
until `release()` or `close()`, so a test can kill the client while that request is in flight;
`pause_mid_stream_turns` streams the first half of those turns' first (streamed) answer, then holds the rest.
`outage` makes the server fail like a provider in an incident: from the first request of `outage.from_turn` on,
every request is answered with each phase's HTTP status (and `Retry-After`) for that phase's seconds, then served
again; failed answers are counted per turn and timed (`TurnStats.failed_at`).

Many runs at once (fleet tests): `requests()` lists every request as a `Request` (arrival time, the
conversation's first user prompt, turn, and the `x-executor` header the client sent), so a test can count sends
per run and per worker; `latency_seconds` makes every answer take that long, like a real model.

Standalone: `python openai_server.py script.json [--delay-turn N ...]` prints the port and serves.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "gpt-test"
MAX_HOLD_SECONDS = 600.0  # a held request is released at close() at the latest; this only bounds a leak


@dataclass
class TurnStats:
    """What the server saw for one turn."""

    received: int = 0
    completed: int = 0
    streamed: list[bool] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    """When each request answered with an outage error arrived (time.time())."""


@dataclass(frozen=True)
class Request:
    """One request as it arrived."""

    at: float  # time.time()
    prompt: str  # the conversation's first user message: which run sent it
    turn: int
    executor: str | None  # the `x-executor` header


@dataclass(frozen=True)
class OutagePhase:
    status: int
    seconds: float
    retry_after: float | None = None


@dataclass(frozen=True)
class Outage:
    """Fail every request for the phases' seconds, starting at the first request of `from_turn`."""

    from_turn: int
    phases: tuple[OutagePhase, ...]


class ScriptedOpenAIServer:
    """The server, run on a background thread of the calling process."""

    def __init__(
        self,
        script: list[dict[str, Any]],
        *,
        delay_turns: Collection[int] = (),
        pause_mid_stream_turns: Collection[int] = (),
        outage: Outage | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        self.script = script
        self.latency_seconds = latency_seconds
        self._requests: list[Request] = []
        self._outage = outage
        self._outage_started: float | None = None
        self._delay_turns = set(delay_turns)
        self._pause_mid_stream_turns = set(pause_mid_stream_turns)
        self._lock = threading.Lock()
        self._turns: dict[int, TurnStats] = {}
        self._released = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let held requests go on (their clients are usually dead by then)."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def stats(self) -> dict[int, TurnStats]:
        """A snapshot of the per-turn counts."""
        with self._lock:
            return {
                turn: TurnStats(s.received, s.completed, list(s.streamed), list(s.failed_at))
                for turn, s in sorted(self._turns.items())
            }

    def requests(self) -> list[Request]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def received(self, turn: int) -> int:
        with self._lock:
            return self._turns[turn].received if turn in self._turns else 0

    # --- Request handling (on the server's threads) ----------------------------------------

    def _receive(self, turn: int, stream: bool, prompt: str = "", executor: str | None = None) -> bool:
        """Count a request; whether it must be held (the first of a delayed turn)."""
        with self._lock:
            self._requests.append(Request(time.time(), prompt, turn, executor))
            stats = self._turns.setdefault(turn, TurnStats())
            stats.received += 1
            stats.streamed.append(stream)
            return turn in self._delay_turns and stats.received == 1

    def _outage_phase(self, turn: int) -> OutagePhase | None:
        """The outage phase this request (just received) falls in, if any; counted as a failed answer."""
        if self._outage is None:
            return None
        with self._lock:
            now = time.monotonic()
            if self._outage_started is None:
                if turn != self._outage.from_turn:
                    return None
                self._outage_started = now
            elapsed = now - self._outage_started
            for phase in self._outage.phases:
                if elapsed < phase.seconds:
                    self._turns[turn].failed_at.append(time.time())
                    return phase
                elapsed -= phase.seconds
            return None

    def _pauses_mid_stream(self, turn: int) -> bool:
        """Whether this request (just received) is the first of a turn to pause halfway through its stream."""
        with self._lock:
            return turn in self._pause_mid_stream_turns and self._turns[turn].received == 1

    def _complete(self, turn: int) -> None:
        with self._lock:
            self._turns[turn].completed += 1

    def _hold(self) -> None:
        self._released.wait(MAX_HOLD_SECONDS)

    def answer(self, turn: int, messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
        """The scripted (text, tool calls) for a turn."""
        if turn >= len(self.script):
            raise LookupError(f"the script has no entry for turn {turn} ({len(self.script)} entries)")
        entry = self.script[turn]
        if "text" in entry:
            return entry["text"].replace("{tool_result}", _last_tool_result(messages)), []
        calls = [
            {
                "id": f"call_{turn}_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call.get("args", {}))},
            }
            for index, call in enumerate(entry["tool_calls"])
        ]
        return None, calls


def _first_prompt(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _last_tool_result(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    return ""


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _make_handler(server: ScriptedOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

        def _send_json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_error(self, phase: OutagePhase) -> None:
            kinds = {401: "invalid_api_key", 429: "rate_limit_exceeded", 503: "service_unavailable"}
            error = {"message": f"outage: HTTP {phase.status}", "type": "outage", "code": kinds.get(phase.status)}
            data = json.dumps({"error": error}).encode()
            self.send_response(phase.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if phase.retry_after is not None:
                self.send_header("Retry-After", f"{phase.retry_after:g}")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/stats":
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                return
            stats = {str(turn): vars(s) for turn, s in server.stats().items()}
            self._send_json(200, stats)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                return
            messages: list[dict[str, Any]] = body.get("messages", [])
            turn = sum(1 for message in messages if message.get("role") == "assistant")
            stream = bool(body.get("stream"))
            if server._receive(turn, stream, _first_prompt(messages), self.headers.get("x-executor")):
                server._hold()
            if server.latency_seconds:
                time.sleep(server.latency_seconds)
            phase = server._outage_phase(turn)
            if phase is not None:
                self._send_error(phase)
                return
            try:
                text, calls = server.answer(turn, messages)
            except LookupError as error:
                self._send_json(500, {"error": {"message": str(error), "type": "server_error"}})
                return
            try:
                if stream:
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._stream(text, calls, include_usage, pause=server._pauses_mid_stream(turn))
                else:
                    self._send_json(200, _completion(text, calls))
            except (BrokenPipeError, ConnectionResetError):
                return  # the client is gone (killed): the request was not served
            server._complete(turn)

        def _stream(self, text: str | None, calls: list[dict[str, Any]], include_usage: bool, pause: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # no length: the body ends when the connection closes
            self.end_headers()
            self.close_connection = True
            created = int(time.time())

            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
                return {
                    "id": "chatcmpl-crash",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": MODEL_NAME,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }

            events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
            if text is not None:
                pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
                events += [chunk({"content": piece}) for piece in pieces]
            for index, call in enumerate(calls):
                events.append(chunk({"tool_calls": [{"index": index, **call}]}))
            events.append(chunk({}, "tool_calls" if calls else "stop"))
            if include_usage:
                events.append({**chunk({}), "choices": [], "usage": _usage()})
            for index, event in enumerate(events):
                if pause and index == len(events) // 2:
                    server._hold()  # half the answer is out: the client is killed here
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def _completion(text: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-crash",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": _usage(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="JSON file: a list of script entries")
    parser.add_argument("--delay-turn", type=int, action="append", default=[], help="hold this turn's first request")
    args = parser.parse_args()
    with open(args.script) as file:
        script = json.load(file)
    server = ScriptedOpenAIServer(script, delay_turns=args.delay_turn).start()
    print(server.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
