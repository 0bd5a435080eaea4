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
