"""Shaped links: a user-space TCP proxy that gives every connection through it a known added
one-way delay and a rate cap in each direction, for devnets whose nodes must differ as real ones
do (``dnanet devnet --shape FILE``). This kernel has no netem, so the shaping is done here.

A :class:`ShapingProxy` listens on loopback and forwards each connection to its target. In each
direction the bytes it reads go onto the link at the rate of a token bucket shared by all the
proxy's connections in that direction (a node's link is one link, however many connections
cross it), in pieces of 4 ms of the rate (at least 1 KiB), and each piece is written ``delay``
after its last byte left: serialized, then propagated, as on a real link. The bucket counts
time on the link's own schedule, not on when the proxy happened to wake up: on a busy host a
late wake-up sends what is overdue at once and a transfer still takes its length over the
rate, where a bucket on the wall clock would lose that time for good. A new connection waits
one added round trip before its first byte is forwarded, as a TCP handshake would. The proxy
reads at most 50 ms ahead of a capped link's schedule and holds at most the bandwidth-delay
product plus 1 MiB (64 MiB uncapped): past that it stops reading, and TCP's flow control slows
the sender.

The shaper's own accuracy is measured with plain sockets (:func:`measure_link` against a
:class:`ProbeServer`, tests/test_shaping.py): "true" is what such a socket measures through
the same shaping, not the nominal setting. The compute slowdown of a shape is realised on the
node (``NodeProfile.compute_slowdown``), not here.

``python -m dnanet.shaping SPEC.json`` runs the proxies of a spec (see :func:`serve_spec`) until
SIGTERM: the devnet's proxies when every role is its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnanet.errors import ConfigError

MB = 1_000_000
"""A rate of 1 MB/s is 10^6 bytes per second."""
READ_BYTES = 64 * 1024
PIECE_S = 0.004
"""A rate-capped link sends pieces of this long of its rate (and at least ``MIN_PIECE_BYTES``)."""
MIN_PIECE_BYTES = 1024
SEND_BUFFER_S = 0.05
"""A rate-capped direction reads at most this far ahead of its link's schedule: a proxy that
wakes up this late still keeps its link busy."""
MAX_SHAPE_DELAY_MS = 10_000
MAX_SLOWDOWN = 1_000


# -- what a link is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkShape:
    """One node's link and compute, as a shape file gives them."""

    name: str = ""
    delay_ms: float = 0.0
    """Added one-way delay, in each direction (the round trip grows by twice this)."""
    rate_mbps: float | None = None
    """Rate cap in MB/s (10^6 bytes/s), in each direction; None: no cap."""
    compute_slowdown: float = 1.0
    """The node's compute takes this many times as long (realised on the node)."""

    @property
    def shapes_link(self) -> bool:
        """Whether the link needs a proxy (a delay or a rate cap)."""
        return self.delay_ms > 0 or self.rate_mbps is not None

    @property
    def rate_bps(self) -> float | None:
        return None if self.rate_mbps is None else self.rate_mbps * MB

    def describe(self) -> str:
        """``+25ms 5MB/s x2`` (what is shaped), ``unshaped`` when nothing is."""
        parts = []
        if self.delay_ms:
            parts.append(f"+{self.delay_ms:g}ms")
        if self.rate_mbps is not None:
            parts.append(f"{self.rate_mbps:g}MB/s")
        if self.compute_slowdown != 1:
            parts.append(f"x{self.compute_slowdown:g}")
        return " ".join(parts) or "unshaped"


_SHAPE_KEYS = {"name", "delay_ms", "rate_mbps", "compute_slowdown"}


def parse_shapes(data: Any, source: str = "shape") -> list[LinkShape]:
    """Shapes from a shape file's content: ``{"nodes": [{"name", "delay_ms", "rate_mbps",
    "compute_slowdown"}, ...]}`` (every key optional). ConfigError naming the entry and key."""
    if not isinstance(data, dict) or set(data) != {"nodes"} or not isinstance(data["nodes"], list):
        raise ConfigError(f"{source}: expected one key, nodes: a list of node shapes")
    if not data["nodes"]:
        raise ConfigError(f"{source}: nodes is empty; list one shape per node")
    shapes = []
    for i, entry in enumerate(data["nodes"]):
        where = f"{source}: nodes[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table of name, delay_ms, rate_mbps, "
                              "compute_slowdown")
        unknown = sorted(set(entry) - _SHAPE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use "
                              f"{', '.join(sorted(_SHAPE_KEYS))}")
        name = entry.get("name", f"node{i}")
        if not isinstance(name, str) or not name or len(name) > 32:
            raise ConfigError(f"{where}.name: expected a string of 1 to 32 characters")
        delay = _number(entry, "delay_ms", where, 0.0, 0.0, MAX_SHAPE_DELAY_MS)
        rate = entry.get("rate_mbps")
        if rate is not None:
            rate = _number(entry, "rate_mbps", where, 0.0, 0.01, 100_000, low_open=False)
        slowdown = _number(entry, "compute_slowdown", where, 1.0, 1.0, MAX_SLOWDOWN)
        shapes.append(LinkShape(name, delay, rate, slowdown))
    names = [s.name for s in shapes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: the name {name!r} is given to more than one node")
    return shapes


def _number(entry: dict[str, Any], key: str, where: str, default: float, low: float,
            high: float, *, low_open: bool = False) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high or (low_open and value == low):
        raise ConfigError(f"{where}.{key}: expected a number from {low:g} to {high:g}, "
                          f"got {value!r}")
    return float(value)


def load_shape_file(path: Path) -> list[LinkShape]:
    """The shapes in a JSON or TOML file (by its suffix: ``.toml`` is TOML, anything else
    JSON). ConfigError naming the file, and the entry and key at fault."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--shape {path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"--shape {path}: not valid {kind}: {exc}") from None
    return parse_shapes(data, f"--shape {path}")


# -- the proxy --------------------------------------------------------------------------------
class TokenBucket:
    """``rate`` bytes/s on the link's own schedule (seconds on a caller's clock): the bucket
    fills at the rate while the link is busy, and an idle link saves nothing (no burst)."""

    def __init__(self, rate_bps: float, piece: int) -> None:
        self.rate = rate_bps
        self.piece = piece
        """The most bytes :meth:`reserve` is asked for at once."""
        self.free_at = -math.inf
        """When the bytes reserved so far have all left."""

    def reserve(self, size: int, ready: float) -> float:
        """When the last of ``size`` bytes, ready at ``ready``, has left the link: they start
        once they are ready and the bytes before them have left. They are taken."""
        done = max(ready, self.free_at) + size / self.rate
        self.free_at = done
        return done


def bucket_for(rate_bps: float | None) -> TokenBucket | None:
    if rate_bps is None:
        return None
    return TokenBucket(rate_bps, max(MIN_PIECE_BYTES, int(rate_bps * PIECE_S)))


class _Direction:
    """One direction of one connection. Bytes read go onto the link at its rate (the bucket's
    schedule), then take ``delay`` to cross it, then are written: as on a real link, where a
    byte is serialized and then propagates. The proxy reads ahead of the schedule by at most
    ``SEND_BUFFER_S`` (a sender's buffer; past it TCP's flow control slows the sender) and holds
    at most ``limit`` bytes undelivered (a receiver that does not read stops the reading)."""

    def __init__(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                 delay_s: float, bucket: TokenBucket | None) -> None:
        self.source = source
        self.sink = sink
        self.delay_s = delay_s
        self.bucket = bucket
        in_flight = bucket.rate * (delay_s + SEND_BUFFER_S) if bucket else 0
        self.limit = (1 << 20) + int(in_flight) if bucket else 64 << 20
        self.pending: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.ended = False

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.room.wait()
                if self.bucket is not None:
                    ahead = self.bucket.free_at - loop.time() - SEND_BUFFER_S
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                data = await self.source.read(READ_BYTES)
                if not data:
                    return
                now = loop.time()
                if self.bucket is None:
                    self.pending.append((now + self.delay_s, data))
                else:
                    piece = self.bucket.piece
                    for offset in range(0, len(data), piece):
                        part = data[offset:offset + piece]
                        sent = self.bucket.reserve(len(part), now)
                        self.pending.append((sent + self.delay_s, part))
                self.held += len(data)
                if self.held >= self.limit:
                    self.room.clear()
                self.arrived.set()
        finally:
            self.ended = True
            self.arrived.set()

    async def write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                if self.ended:
                    break
                self.arrived.clear()
                await self.arrived.wait()
                continue
            due, data = self.pending.popleft()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            self.sink.write(data)
            await self.sink.drain()
            self.held -= len(data)
            if self.held < self.limit:
                self.room.set()
        if self.sink.can_write_eof():
            with contextlib.suppress(OSError):
                self.sink.write_eof()


class ShapingProxy:
    """A TCP proxy on ``host:port`` (0: any free port) to ``target`` with ``shape``'s delay and
    rate cap in each direction: ``to_target`` is the target's download, the other its upload."""

    def __init__(self, shape: LinkShape, target: tuple[str, int], *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.shape = shape
        self.target = target
        self.host = host
        self.port = port
        self.to_target = bucket_for(shape.rate_bps)
        self.to_client = bucket_for(shape.rate_bps)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end every connection (each handler returns before this does)."""
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # handlers of connections just accepted register themselves
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            # The proxy stops. Ending the handler normally, not cancelled: Python 3.11's
            # asyncio reports a cancelled connection handler as an unhandled exception.
            pass
        finally:
            self._tasks.discard(task)

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        delay_s = self.shape.delay_ms / 1000
        target_writer: asyncio.StreamWriter | None = None
        try:
            if delay_s:
                await asyncio.sleep(2 * delay_s)  # the handshake's round trip
            target_reader, target_writer = await asyncio.open_connection(*self.target)
            _no_delay(client_writer)
            _no_delay(target_writer)
            up = _Direction(client_reader, target_writer, delay_s, self.to_target)
            down = _Direction(target_reader, client_writer, delay_s, self.to_client)
            tasks = [asyncio.ensure_future(c) for c in (up.read(), up.write(), down.read(),
                                                        down.write())]
            try:
                # Each direction ends at its EOF; a failing side (gone, reset) ends all.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except OSError:
            pass  # the target cannot be reached: the client sees its connection closed
        finally:
            for w in (client_writer, target_writer):
                if w is not None:
                    w.close()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- plain-socket measurement -----------------------------------------------------------------
_ECHO, _SINK, _SOURCE = b"E", b"S", b"O"


class ProbeServer:
    """The far end of :func:`measure_link`: echoes (``E``), swallows ``n`` bytes and answers
    one byte (``S`` + n), or sends ``n`` bytes (``O`` + n); n as 8 bytes, big-endian."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._payload = bytes(READ_BYTES)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        try:
            while command := await reader.read(1):
                if command == _ECHO:
                    writer.write(await reader.readexactly(1))
                elif command in (_SINK, _SOURCE):
                    (size,) = struct.unpack(">Q", await reader.readexactly(8))
                    if command == _SINK:
                        while size > 0:
                            size -= len(await reader.readexactly(min(size, READ_BYTES)))
                        writer.write(b"K")
                    else:
                        while size > 0:
                            writer.write(self._payload[:min(size, READ_BYTES)])
                            size -= min(size, READ_BYTES)
                            await writer.drain()
                else:
                    return
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@dataclass(frozen=True)
class LinkMeasurement:
    """What a plain socket measured of a link (seconds, bytes/s)."""

    rtt_s: float
    """The minimum round trip of one byte."""
    rtt_median_s: float
    download_bps: float
    """Toward the far end (a node behind the link downloads this way)."""
    upload_bps: float


def measure_link(host: str, port: int, *, echoes: int = 32, transfer_bytes: int = 1 << 20,
                 timeout_s: float = 60.0) -> LinkMeasurement:
    """Measure the link to a :class:`ProbeServer` (directly or through a proxy) with one
    blocking TCP socket (no event loop in the timed path): the round trip as the minimum of
    ``echoes`` one-byte echoes, and each direction's rate as ``transfer_bytes`` over the time
    from asking to the last byte (or the sink's answer) less that round trip."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(echoes):
            started = time.perf_counter()
            sock.sendall(_ECHO + b"x")
            _recv_exactly(sock, 1)
            rtts.append(time.perf_counter() - started)
        rtt = min(rtts)
        chunk = bytes(READ_BYTES)
        started = time.perf_counter()
        sock.sendall(_SINK + struct.pack(">Q", transfer_bytes))
        left = transfer_bytes
        while left > 0:
            sent = sock.send(chunk[:min(left, READ_BYTES)])
            left -= sent
        _recv_exactly(sock, 1)
        down_s = time.perf_counter() - started - rtt
        started = time.perf_counter()
        sock.sendall(_SOURCE + struct.pack(">Q", transfer_bytes))
        _recv_exactly(sock, transfer_bytes)
        up_s = time.perf_counter() - started - rtt
    rtts.sort()
    return LinkMeasurement(rtt_s=rtt, rtt_median_s=rtts[(len(rtts) - 1) // 2],
                           download_bps=transfer_bytes / max(down_s, 1e-9),
                           upload_bps=transfer_bytes / max(up_s, 1e-9))


def _recv_exactly(sock: socket.socket, size: int) -> None:
    while size > 0:
        data = sock.recv(min(size, 1 << 20))
        if not data:
            raise ConnectionError("the probe server closed the connection")
        size -= len(data)


def probe_bytes(shape: LinkShape) -> int:
    """A transfer that takes ~0.5 s at the link's cap (256 KiB to 8 MiB), or 8 MiB uncapped."""
    if shape.rate_bps is None:
        return 8 << 20
    return max(256 << 10, min(8 << 20, int(shape.rate_bps * 0.5)))


# -- a devnet's links -------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkSpec:
    """One proxy of a devnet: where it listens, where it forwards, and how it shapes."""

    listen_port: int
    target_port: int
    shape: LinkShape

    def to_json(self) -> dict[str, Any]:
        return {"listen": self.listen_port, "target": self.target_port,
                "name": self.shape.name, "delay_ms": self.shape.delay_ms,
                "rate_mbps": self.shape.rate_mbps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkSpec:
        return cls(int(data["listen"]), int(data["target"]),
                   LinkShape(str(data["name"]), float(data["delay_ms"]),
                             None if data["rate_mbps"] is None else float(data["rate_mbps"])))


class ShapedLinks:
    """The proxies of a devnet: one per shaped node in front of its port, and, for measuring
    each shaping with a plain socket, one more with the same shape in front of one shared
    :class:`ProbeServer` (its own buckets: probing does not slow the node's link)."""

    def __init__(self, links: Sequence[LinkSpec], probe_port: int,
                 probe_links: Sequence[LinkSpec], host: str = "127.0.0.1") -> None:
        self.probe = ProbeServer(host, probe_port)
        self.proxies = [ShapingProxy(s.shape, (host, s.target_port), host=host,
                                     port=s.listen_port) for s in links]
        self.probe_proxies = [ShapingProxy(s.shape, (host, probe_port), host=host,
                                           port=s.listen_port) for s in probe_links]

    async def start(self) -> None:
        await self.probe.start()
        for proxy in (*self.proxies, *self.probe_proxies):
            await proxy.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in (*self.proxies, *self.probe_proxies)))
        await self.probe.stop()


class ShapingThread:
    """``links`` served on an asyncio event loop in a thread of its own, started and stopped
    from another loop. Not uvloop, whose clock is read once per loop iteration and counts
    whole milliseconds: a delay would come out up to a millisecond short."""

    def __init__(self, links: ShapedLinks, name: str = "shaping") -> None:
        self.links = links
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def _call(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def start(self) -> None:
        await self._call(self.links.start())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._call(self.links.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)
        if not self.thread.is_alive():
            self.loop.close()


def spec_json(links: Sequence[LinkSpec], probe_port: int,
              probe_links: Sequence[LinkSpec]) -> dict[str, Any]:
    """The spec ``python -m dnanet.shaping`` runs."""
    return {"probe_port": probe_port, "links": [s.to_json() for s in links],
            "probe_links": [s.to_json() for s in probe_links]}


async def serve_spec(spec: dict[str, Any]) -> None:
    """Run a spec's proxies until cancelled."""
    links = ShapedLinks([LinkSpec.from_json(s) for s in spec["links"]], int(spec["probe_port"]),
                        [LinkSpec.from_json(s) for s in spec["probe_links"]])
    await links.start()
    try:
        await asyncio.Event().wait()
    finally:
        await links.stop()


@dataclass(frozen=True)
class NodeLink:
    """One node of a shaped devnet: the port it serves on, and, when its link is shaped, the
    proxy mixers reach it through and the proxy of the same shape its link is probed through."""

    shape: LinkShape
    node_port: int
    proxy_port: int | None = None
    probe_port: int | None = None

    @property
    def public_url(self) -> str | None:
        """The endpoint the node registers (its proxy's), None for an unshaped link."""
        return None if self.proxy_port is None else f"http://127.0.0.1:{self.proxy_port}"


class DevnetLinks:
    """A devnet's shaped links: ports for every node (``free_port`` picks them), the proxies
    to run (:meth:`proxies` in this process, :meth:`spec` for ``python -m dnanet.shaping``),
    and :meth:`measure`, the "true" figures of every node's link, from a plain socket
    through a proxy of the same shape (straight to the probe server for an unshaped link)."""

    def __init__(self, shapes: Sequence[LinkShape], free_port: Callable[[], int]) -> None:
        self.probe_port = free_port()
        self.nodes = [NodeLink(shape, free_port(), *((free_port(), free_port())
                                                     if shape.shapes_link else (None, None)))
                      for shape in shapes]

    def _specs(self) -> tuple[list[LinkSpec], list[LinkSpec]]:
        links, probes = [], []
        for n in self.nodes:
            if n.proxy_port is not None and n.probe_port is not None:
                links.append(LinkSpec(n.proxy_port, n.node_port, n.shape))
                probes.append(LinkSpec(n.probe_port, self.probe_port, n.shape))
        return links, probes

    def proxies(self) -> ShapedLinks:
        links, probes = self._specs()
        return ShapedLinks(links, self.probe_port, probes)

    def spec(self) -> dict[str, Any]:
        links, probes = self._specs()
        return spec_json(links, self.probe_port, probes)

    def ports(self) -> list[int]:
        """Every port the proxies listen on."""
        return [self.probe_port, *(p for n in self.nodes for p in (n.proxy_port, n.probe_port)
                                   if p is not None)]

    async def wait_listening(self, timeout_s: float = 30.0) -> None:
        """Until every proxy accepts connections (ConfigError naming a port that does not)."""
        deadline = time.monotonic() + timeout_s
        for port in self.ports():
            while True:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise ConfigError(f"the shaping proxy on port {port} did not start "
                                          f"within {timeout_s:g} s") from None
                    await asyncio.sleep(0.05)

    async def measure(self) -> list[LinkMeasurement]:
        """Each node's link, measured one after the other with a plain socket."""
        out = []
        for node in self.nodes:
            port = node.probe_port if node.probe_port is not None else self.probe_port
            out.append(await asyncio.to_thread(measure_link, "127.0.0.1", port, echoes=16,
                                               transfer_bytes=probe_bytes(node.shape)))
        return out


def main(argv: Sequence[str]) -> int:
    """``python -m dnanet.shaping SPEC.json``: serve the spec until SIGTERM or SIGINT."""
    from dnanet.service.loop import cancel_once

    if len(argv) != 1:
        print("usage: python -m dnanet.shaping SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    loop = asyncio.new_event_loop()  # not uvloop: see ShapingThread
    task = loop.create_task(serve_spec(spec))
    on_signal = cancel_once(task)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = [
    "DevnetLinks", "LinkMeasurement", "LinkShape", "LinkSpec", "NodeLink", "ProbeServer",
    "ShapedLinks", "ShapingProxy", "ShapingThread", "TokenBucket", "load_shape_file",
    "measure_link", "parse_shapes", "probe_bytes", "serve_spec", "spec_json",
]
