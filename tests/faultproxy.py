"""A fault-injecting HTTPS proxy between the controller and the real API server, for the tests.

It terminates TLS with a certificate from the test cluster's CA, forwards each
request on a fresh upstream connection, and on the way injects, with fixed
seeded odds: connection resets, 429 with Retry-After, 503, slow answers, and
for watches, streams cut short or answered with a 410 Gone ERROR event. It
counts what it injected, so a test can say which faults the controller met.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

GONE_EVENT = json.dumps({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                     "message": "too old resource version", "reason": "Expired", "code": 410}})


@dataclass
class FaultOdds:
    reset: float = 0.05
    throttle: float = 0.05
    unavailable: float = 0.05
    slow: float = 0.05
    slow_seconds: float = 1.0
    watch_gone: float = 0.3
    watch_cut_seconds: float = 3.0


@dataclass
class FaultProxy:
    upstream_port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    odds: FaultOdds = field(default_factory=FaultOdds)
    seed: int = 1
    injected: Counter[str] = field(default_factory=Counter)
    writes: int = 0  # write requests that reached the proxy, faulted or not

    def start(self) -> int:
        """Serve on a thread of its own; returns the port."""
        self._ready = threading.Event()
        self._rand = random.Random(self.seed)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ssl.load_cert_chain(self.cert_file, self.key_file)
        self._upstream_ssl = ssl.create_default_context(cafile=str(self.ca_file))
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=server_ssl)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    def _roll(self, name: str, odds: float) -> bool:
        # Each kind fires at least once (on its first chance), then with its odds:
        # a run short enough for CI still meets every kind of fault.
        if not self.injected[name] or self._rand.random() < odds:
            self.injected[name] += 1
            return True
        return False

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, list[bytes], bytes] | None:
        line = await reader.readline()
        if not line:
            return None
        headers = []
        length = 0
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b""):
                break
            if header.lower().startswith(b"content-length:"):
                length = int(header.split(b":")[1])
            if not header.lower().startswith((b"connection:", b"keep-alive:")):
                headers.append(header)
        body = await reader.readexactly(length) if length else b""
        return line, headers, body

    @staticmethod
    def _status(code: int, reason: str) -> bytes:
        return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}).encode()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: str, body: bytes, extra: bytes = b"") -> None:
        writer.write(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            line, headers, body = request
            method = line.split(b" ")[0].decode()
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                self.writes += 1
            watch = b"watch=true" in line.split(b" ")[1] if b" " in line else False
            if self._roll("reset", self.odds.reset):
                writer.transport.abort()
                return
            if self._roll("throttle_429", self.odds.throttle):
                await self._answer(writer, "429 Too Many Requests", self._status(429, "TooManyRequests"), b"Retry-After: 1\r\n")
                return
            if self._roll("unavailable_503", self.odds.unavailable):
                await self._answer(writer, "503 Service Unavailable", self._status(503, "ServiceUnavailable"))
                return
            if watch and self._roll("watch_410", self.odds.watch_gone):
                chunk = GONE_EVENT.encode() + b"\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
                await writer.drain()
                return
            if self._roll("slow", self.odds.slow):
                await asyncio.sleep(self.odds.slow_seconds)
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port, ssl=self._upstream_ssl, server_hostname="127.0.0.1")
            upstream_writer.write(line + b"".join(headers) + b"Connection: close\r\n\r\n" + body)
            await upstream_writer.drain()
            cut_at = asyncio.get_running_loop().time() + self.odds.watch_cut_seconds if watch else None
            while True:
                timeout = None if cut_at is None else max(0.0, cut_at - asyncio.get_running_loop().time())
                try:
                    data = await asyncio.wait_for(upstream_reader.read(65536), timeout)
                except asyncio.TimeoutError:
                    self.injected["watch_cut"] += 1
                    break
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            upstream_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()
