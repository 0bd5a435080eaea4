"""The env server's connection guard (envs/server/connections.py) on raw keep-alive sockets.

A request answered before its body arrived (413 by Content-Length) must leave the connection
usable once the body is through: the body's bytes are body, never the next request's headers,
whatever the size of the chunk that ends them.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return status, headers, rest[:length]


def _request(path: str, body: bytes, sid: str, length: int | None = None) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nX-Session-ID: {sid}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length or len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("tail_kib", [1, 200])
def test_a_413_answered_early_keeps_the_connection_usable(server_url: str, tail_kib: int) -> None:
    sid = f"conn-413-{tail_kib}"
    create = b'{"env_name": "gsm8k", "split": "train", "index": 0}'
    assert httpx.post(
        f"{server_url}/create", content=create, headers={"X-Session-ID": sid}
    ).is_success
    host, port = server_url.removeprefix("http://").split(":")
    size = 2 << 20  # over the 1 MiB limit of /call
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(_request("/gsm8k/call", b"", sid, length=size))
        status, headers, _ = _read_response(sock)  # answered by Content-Length, body unsent
        tail = tail_kib << 10
        assert status == 413 and headers.get("connection", "").lower() != "close"
        # the body arrives after the answer, then (once the server has read it) the next request
        sock.sendall(b" " * (size - tail))
        time.sleep(0.2)
        sock.sendall(b" " * tail)  # the chunk that ends the body: `tail_kib` KiB
        time.sleep(0.5)
        call = b'{"name": "calculator", "input": {"expression": "2+3"}}'
        sock.sendall(_request("/gsm8k/call", call, sid))
        status, _, body = _read_response(sock)
        assert status == 200, body[:300]
        assert b"2+3 = 5" in body


def _fair_waits(url: str) -> int:
    metrics = httpx.get(f"{url}/metrics").text.splitlines()
    return int(
        next(line for line in metrics if line.startswith("ors_fair_waits_total ")).split()[1]
    )


def test_a_body_sent_slowly_by_one_client_never_holds_back_another(server_url: str) -> None:
    """Another client's request that waits on its own body is not a request that wants the loop:
    a client ahead of it on the fair share (envs/server/fairness.py) goes on. Once, 5 such
    bodies of 1,000 bytes from 127.0.0.2 held each call of 127.0.0.1 for 10 s (MAX_WAIT_S)."""
    host, port = server_url.removeprefix("http://").split(":")
    sid = {"X-Session-ID": "fair-good"}
    create = {"env_name": "gsm8k", "split": "train", "index": 0}
    assert httpx.post(f"{server_url}/create", json=create, headers=sid).is_success
    waits = _fair_waits(server_url)
    slow = []
    for k in range(3):  # another client: a /create whose body never comes
        sock = socket.create_connection(
            (host, int(port)), timeout=30, source_address=("127.0.0.2", 0)
        )
        sock.sendall(_request("/create", b"{", f"fair-slow-{k}", length=1000))
        slow.append(sock)
    try:
        heavy = {"name": "calculator", "input": {"expression": "((((1/3)**64+1)**64)**64)**64"}}
        with httpx.Client(timeout=5) as c:  # a wait for the slow client would be 10 s
            for _ in range(8):  # each >= 10 ms of loop: this client gets ahead of the other
                r = c.post(f"{server_url}/gsm8k/call", json=heavy, headers=sid)
                assert r.status_code == 200, r.text
        assert _fair_waits(server_url) == waits
    finally:
        for sock in slow:
            sock.close()


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"|".join(chunks))  # the pieces as given, joined here only to compare
        self.events.append("writelines")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 5

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_an_answers_writes_in_one_loop_turn_leave_as_one_send() -> None:
    """uvicorn writes an answer's head and body separately (two sends, each a syscall); the
    server's transport joins the writes of one loop turn, flushes them before a close, drops
    them on an abort, and counts them as unsent meanwhile."""
    import asyncio

    from envs.server.connections import _CoalescedWrites

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        raw = _RecordingTransport()
        t = _CoalescedWrites(raw, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.writelines([b"bo", b"dy"])
        assert raw.writes == [] and t.get_write_buffer_size() == 5 + 23
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"last")
        t.close()
        assert raw.events == ["write", "write", "close"] and raw.writes[-1] == b"last"
        raw2 = _RecordingTransport()
        t2 = _CoalescedWrites(raw2, loop)  # type: ignore[arg-type]
        t2.write(b"never")
        t2.abort()
        await asyncio.sleep(0)
        assert raw2.events == ["abort"] and t2.get_extra_info("peername") == "info:peername"

    asyncio.run(scenario())


def test_a_large_answer_leaves_in_the_step_that_wrote_it() -> None:
    """A 2 MB task listing costs the loop ~2 ms to copy and send: written at once, after the
    head already pending and not joined to it, in the request's own step (which the fair share
    charges to its client) rather than in a callback no client is charged for."""
    import asyncio

    from envs.server.connections import _CoalescedWrites

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        raw = _RecordingTransport()
        t = _CoalescedWrites(raw, loop)  # type: ignore[arg-type]
        big = b"x" * t.LARGE_WRITE
        t.write(b"HEAD")
        t.write(big)
        assert raw.writes == [b"HEAD|" + big] and raw.events == ["writelines"]
        assert t.get_write_buffer_size() == 5
        await asyncio.sleep(0)  # the head's scheduled flush finds nothing left
        assert raw.events == ["writelines"]
        t.write(big)
        assert raw.writes[-1] == big and t.get_write_buffer_size() == 5

    asyncio.run(scenario())
