"""The daemons' HTTP layer: error mapping, body-size and rate limits, request metrics.

Requests go through the whole ASGI stack with httpx's ASGITransport (the client address is
the transport's), and once through uvicorn over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.datastructures import URL

from dnanet.errors import (
    ChainError,
    CodecError,
    CryptoError,
    DnanetError,
    ProtocolError,
    QuorumError,
    SignatureError,
)
from dnanet.service.http import (
    KEEP_ALIVE_S,
    LATENCY_BUCKETS_S,
    AppLimits,
    DirectRoutes,
    TokenBucket,
    _route_label,
    add_direct_route,
    create_app,
    read_body,
    read_json,
    serving,
)

UNLIMITED = AppLimits(rate_per_s=1e9, burst=10**9)


def make_app(limits: AppLimits = UNLIMITED) -> FastAPI:
    app = create_app("test", limits=limits)

    @app.get("/raise/{kind}")
    async def raise_(kind: str) -> Any:
        errors: dict[str, Exception] = {
            "codec": CodecError("bad field", field="a.b"),
            "protocol": ProtocolError("breaks a rule", field="round"),
            "quorum": QuorumError("too few signatures"),
            "crypto": CryptoError("bad key"),
            "signature": SignatureError("wrong signer", field="signature"),
            "chain": ChainError("node down"),
            "plain": DnanetError("something"),
            "bug": KeyError("secret detail"),
        }
        raise errors[kind]

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await read_body(request, 100), media_type="application/octet-stream")

    @app.post("/json")
    async def json_(request: Request) -> Any:
        return {"got": await read_json(request)}

    @app.get("/query")
    async def query(n: int) -> Any:
        return {"n": n}

    @app.get("/silent")
    async def silent(request: Request) -> Response:
        return Response(b"", status_code=204)

    return app


async def _request(app: FastAPI, method: str, path: str, *, client: str = "10.0.0.1",
                   **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.request(method, path, **kwargs)


def request(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_request(app, method, path, **kwargs))


def requests_counted(app: FastAPI, path: str, status: int) -> float:
    registry: CollectorRegistry = app.state.registry
    value = registry.get_sample_value("dnanet_http_requests_total",
                                      {"path": path, "status": str(status)})
    return value or 0.0


@pytest.mark.parametrize(
    ("kind", "status", "type_", "field", "message"),
    [
        ("codec", 400, "CodecError", "a.b", "bad field"),
        ("protocol", 422, "ProtocolError", "round", "breaks a rule"),
        ("quorum", 422, "QuorumError", None, "too few signatures"),
        ("crypto", 422, "CryptoError", None, "bad key"),
        ("signature", 422, "SignatureError", "signature", "wrong signer"),
        ("chain", 503, "ChainError", None, "node down"),
        ("plain", 400, "DnanetError", None, "something"),
    ],
)
def test_dnanet_errors_map_to_status_and_json(kind: str, status: int, type_: str,
                                              field: str | None, message: str) -> None:
    app = make_app()
    response = request(app, "GET", f"/raise/{kind}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": {"type": type_, "message": message, "field": field}}
    assert requests_counted(app, "/raise/{kind}", status) == 1


def test_unexpected_error_is_logged_and_answers_500_without_details(
        caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    with caplog.at_level(logging.ERROR, logger="dnanet.http"):
        response = request(app, "GET", "/raise/bug")
    assert response.status_code == 500
    assert response.content == (
        b'{"error":{"type":"InternalError","message":"internal error","field":null}}')
    assert "secret" not in response.text
    assert any("unhandled error on /raise/bug" in r.getMessage() and r.exc_info
               for r in caplog.records)
    assert requests_counted(app, "/raise/{kind}", 500) == 1


def test_rate_limit_answers_429_per_client() -> None:
    app = make_app(AppLimits(rate_per_s=0.001, burst=2))

    async def body() -> list[httpx.Response]:
        return [await _request(app, "GET", "/health") for _ in range(3)] + [
            await _request(app, "GET", "/health", client="10.0.0.2")]

    first, second, limited, other = asyncio.run(body())
    assert first.status_code == second.status_code == other.status_code == 200
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.content == (b'{"error":{"type":"RateLimited","message":'
                               b'"too many requests; retry later","field":null}}')
    assert requests_counted(app, "/health", 429) == 1
    assert requests_counted(app, "/health", 200) == 3


def test_token_bucket_refills_at_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("dnanet.service.http.time.monotonic", lambda: now[0])
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow("a") for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.allow("a") for _ in range(2)] == [True, False]
    now[0] += 100.0  # never more than the burst
    assert [bucket.allow("a") for _ in range(4)] == [True, True, True, False]


def test_declared_body_over_the_limit_answers_413_unread() -> None:
    app = make_app(AppLimits(max_body_bytes=50, rate_per_s=1e9, burst=10**9))
    response = request(app, "POST", "/echo", content=b"x" * 51)
    assert response.status_code == 413
    assert response.json() == {"error": {"type": "TooLarge", "field": "body",
                                         "message": "body of 51 bytes exceeds 50"}}
    assert requests_counted(app, "/echo", 413) == 1
    at_limit = request(app, "POST", "/echo", content=b"x" * 50)
    assert at_limit.status_code == 200
    assert at_limit.content == b"x" * 50


def test_a_path_with_its_own_body_limit_is_not_refused_by_the_guard() -> None:
    app = make_app(AppLimits(max_body_bytes=50, rate_per_s=1e9, burst=10**9))
    app.state.own_body_limit.add("/echo")  # /echo reads at most 100 bytes itself
    response = request(app, "POST", "/echo", content=b"x" * 80)
    assert (response.status_code, response.content) == (200, b"x" * 80)
    assert request(app, "POST", "/echo", content=b"x" * 101).json()["error"]["message"] == (
        "request body exceeds 100 bytes")
    assert request(app, "POST", "/json", content=b"x" * 51).status_code == 413


def test_read_body_refuses_a_chunked_body_over_its_limit() -> None:
    app = make_app()

    async def chunks(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * 30

    ok = request(app, "POST", "/echo", content=chunks(3))
    assert ok.status_code == 200
    assert ok.content == b"x" * 90
    too_big = request(app, "POST", "/echo", content=chunks(4))
    assert too_big.status_code == 413
    assert too_big.json()["error"] == {"type": "TooLarge", "field": "body",
                                       "message": "request body exceeds 100 bytes"}


def test_bodies_held_at_once_are_bounded_over_all_requests() -> None:
    """Past ``max_held_body_bytes`` held at once a request is refused with 503 Busy (unread
    when it declares its length, else as its body arrives); answered requests give theirs
    back."""
    app = make_app(AppLimits(rate_per_s=1e9, burst=10**9, max_held_body_bytes=100))
    entered, release = asyncio.Event(), asyncio.Event()

    @app.post("/hold")
    async def hold(request: Request) -> Response:
        body = await read_body(request, 1000)
        entered.set()
        await release.wait()
        return Response(body, media_type="application/octet-stream")

    async def chunks(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * 30

    async def go() -> None:
        held = asyncio.create_task(_request(app, "POST", "/hold", content=b"x" * 60))
        await entered.wait()  # 60 bytes held
        for content in (b"y" * 50, chunks(2)):
            refused = await _request(app, "POST", "/echo", content=content)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "Busy"
            assert refused.json()["error"]["field"] == "body"
        fits = await _request(app, "POST", "/echo", content=b"z" * 40)
        assert (fits.status_code, fits.content) == (200, b"z" * 40)
        release.set()
        assert (await held).content == b"x" * 60
        # Everything given back: a request of the whole budget fits again.
        again = await _request(app, "POST", "/hold", content=b"w" * 100)
        assert again.status_code == 200

    asyncio.run(go())
    assert requests_counted(app, "/echo", 503) == 2


def test_read_json_is_strict() -> None:
    app = make_app()
    assert request(app, "POST", "/json", content=b'{"a":[1,2]}').json() == {"got": {"a": [1, 2]}}
    for raw in (b'{"a":1.5}', b'{"a":1,"a":2}', b"[" * 20 + b"]" * 20, b"\xff"):
        response = request(app, "POST", "/json", content=raw)
        assert response.status_code == 400, raw
        assert response.json()["error"]["type"] == "CodecError"
        assert response.json()["error"]["field"] == "body"  # the document as a whole


def test_request_validation_error_is_a_codec_error() -> None:
    response = request(make_app(), "GET", "/query?n=abc")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "CodecError"
    assert error["field"] == "n"
    assert request(make_app(), "GET", "/query?n=7").json() == {"n": 7}


def _series(metrics_text: str, name: str) -> set[str]:
    """The label sets of ``name``'s samples in a Prometheus exposition."""
    return {line.split("{", 1)[1].rsplit("}", 1)[0] for line in metrics_text.splitlines()
            if line.startswith(name + "{")}


def test_requests_count_and_time_under_their_route_template_not_their_path() -> None:
    app = make_app()

    @app.get("/v1/batches/{batch_hash}")
    async def batch(batch_hash: str) -> Any:
        return {"batch_hash": batch_hash}

    async def body() -> str:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for i in range(200):  # 200 distinct hashes, 200 distinct unknown paths
                assert (await http.get(f"/v1/batches/0x{i:064x}")).status_code == 200
                assert (await http.get(f"/missing/{i}")).status_code == 404
            return (await http.get("/metrics")).text

    text = asyncio.run(body())
    assert _series(text, "dnanet_http_requests_total") == {
        'path="/v1/batches/{batch_hash}",status="200"', 'path="unmatched",status="404"'}
    assert requests_counted(app, "/v1/batches/{batch_hash}", 200) == 200
    assert requests_counted(app, "unmatched", 404) == 200
    # One histogram per template: its buckets, sum and count.
    buckets = _series(text, "dnanet_http_request_duration_seconds_bucket")
    assert {re.search(r'path="[^"]*"', b)[0] for b in buckets} == {  # type: ignore[index]
        'path="/v1/batches/{batch_hash}"', 'path="unmatched"'}
    assert len(buckets) == 2 * (len(LATENCY_BUCKETS_S) + 1)  # and +Inf
    registry: CollectorRegistry = app.state.registry
    assert registry.get_sample_value("dnanet_http_request_duration_seconds_count",
                                     {"path": "/v1/batches/{batch_hash}"}) == 200


def test_a_request_refused_before_routing_counts_under_the_route_it_asked_for() -> None:
    app = make_app(AppLimits(rate_per_s=0.001, burst=1, max_body_bytes=10))

    async def body() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [(await http.get("/raise/codec")).status_code,
                    (await http.get("/raise/chain")).status_code,
                    (await http.get("/nowhere")).status_code]

    assert asyncio.run(body()) == [400, 429, 429]
    assert requests_counted(app, "/raise/{kind}", 400) == 1
    assert requests_counted(app, "/raise/{kind}", 429) == 1
    assert requests_counted(app, "unmatched", 429) == 1


def test_metrics_and_health() -> None:
    app = make_app()
    assert request(app, "GET", "/health").json() == {"status": "ok"}
    assert request(app, "GET", "/silent").status_code == 204
    metrics = request(app, "GET", "/metrics")
    assert metrics.status_code == 200
    assert 'dnanet_http_requests_total{path="/health",status="200"} 1.0' in metrics.text
    assert 'dnanet_http_requests_total{path="/silent",status="204"} 1.0' in metrics.text
    assert 'dnanet_http_request_duration_seconds_count{path="/health"} 1.0' in metrics.text


def test_an_outer_http_middleware_still_wraps_the_guard() -> None:
    # NodeDaemon adds its own @app.middleware("http") after create_app.
    app = make_app()
    offline = [False]

    @app.middleware("http")
    async def shape(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if offline[0]:
            return Response(status_code=503)
        return await call_next(request)

    assert request(app, "GET", "/raise/protocol").status_code == 422
    assert request(app, "GET", "/raise/bug").status_code == 500
    assert request(app, "POST", "/echo", content=b"abc").content == b"abc"
    offline[0] = True
    assert request(app, "GET", "/health").status_code == 503


def test_served_over_loopback() -> None:
    app = make_app(AppLimits(max_body_bytes=1000, rate_per_s=1e9, burst=10**9))

    async def body() -> None:
        async with serving(app, "127.0.0.1", 0) as server:
            port = server.server.servers[0].sockets[0].getsockname()[1]
            assert port != 0 and server.url == f"http://127.0.0.1:{port}"  # the bound port
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.post("/echo", content=b"hello")).content == b"hello"
                assert (await http.get("/raise/chain")).status_code == 503
                assert (await http.post("/echo", content=b"x" * 1001)).status_code == 413
                assert (await http.post("/echo", content=b"x" * 101)).status_code == 413

    asyncio.run(body())
    assert requests_counted(app, "/echo", 200) == 1
    assert requests_counted(app, "/echo", 413) == 2


def _direct_app() -> FastAPI:
    app = make_app(AppLimits(max_body_bytes=1000, rate_per_s=1e9, burst=10**9))

    async def handler(raw: bytes) -> tuple[int, bytes]:
        if raw == b"protocol":
            raise ProtocolError("breaks a rule", field="round")
        if raw == b"bug":
            raise KeyError("secret detail")
        if raw == b"closed":
            return 409, b'{"closed":true}'
        return 200, b'{"length":%d}' % len(raw)

    add_direct_route(app, "/direct", handler, max_body_bytes=100, tags=["test"],
                     openapi_extra={"x-test": True})
    return app


async def _direct_exchanges(http: httpx.AsyncClient) -> list[tuple[int, Any]]:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 30

    out = []
    for content in (b"abc", b"protocol", b"closed", b"x" * 101, b"x" * 1001, chunks()):
        response = await http.post("/direct", content=content)
        out.append((response.status_code, response.json()))
    return out


def test_a_direct_route_answers_alike_through_the_server_and_the_app() -> None:
    expected = [
        (200, {"length": 3}),
        (422, {"error": {"type": "ProtocolError", "field": "round", "message": "breaks a rule"}}),
        (409, {"closed": True}),
        (413, {"error": {"type": "TooLarge", "field": "body",
                         "message": "request body exceeds 100 bytes"}}),
        (413, {"error": {"type": "TooLarge", "field": "body",
                         "message": "body of 1001 bytes exceeds 1000"}}),
        (413, {"error": {"type": "TooLarge", "field": "body",
                         "message": "request body exceeds 100 bytes"}}),
    ]
    served, in_app = _direct_app(), _direct_app()

    async def body() -> None:
        async with serving(served, "127.0.0.1", 0) as server:
            assert isinstance(server.server.config.app, DirectRoutes)
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert await _direct_exchanges(http) == expected
                # Other methods and paths still reach FastAPI.
                assert (await http.get("/direct")).status_code == 405
                assert (await http.post("/echo", content=b"hi")).content == b"hi"
        transport = httpx.ASGITransport(app=in_app, client=("10.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert await _direct_exchanges(http) == expected

    asyncio.run(body())
    for app in (served, in_app):
        assert requests_counted(app, "/direct", 200) == 1
        assert requests_counted(app, "/direct", 413) == 3
    spec = request(in_app, "GET", "/openapi.json").json()
    assert spec["paths"]["/direct"]["post"]["x-test"] is True


def test_a_direct_route_shares_the_rate_limit_and_hides_bugs(
        caplog: pytest.LogCaptureFixture) -> None:
    limited = create_app("limited", limits=AppLimits(rate_per_s=0.001, burst=2))

    async def ok(raw: bytes) -> tuple[int, bytes]:
        if raw == b"bug":
            raise KeyError("secret detail")
        return 200, b"{}"

    add_direct_route(limited, "/direct", ok, max_body_bytes=100, tags=["test"])
    front = DirectRoutes(limited)

    async def body() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=front, client=("10.0.0.9", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [await http.post("/direct", content=b"bug"), await http.get("/health"),
                    await http.post("/direct", content=b"a")]

    with caplog.at_level(logging.ERROR, logger="dnanet.http"):
        bug, health, limited_out = asyncio.run(body())
    # The bug answers 500 without details (logged); /health spends the last token; then 429.
    assert (bug.status_code, health.status_code, limited_out.status_code) == (500, 200, 429)
    assert bug.json()["error"]["type"] == "InternalError"
    assert "secret" not in bug.text
    assert "secret detail" in caplog.text


@settings(max_examples=300, deadline=None)
@given(path=st.text(alphabet=st.sampled_from("/ab%?#\\ :.\t\n\r[]@é~\x00\x7f"), max_size=12)
       | st.from_regex(r"/v1/[a-z0-9/]{0,20}", fullmatch=True),
       host=st.sampled_from([None, b"test", b"test:8000", b"[::1]:80", b"bad host"]),
       query=st.sampled_from([b"", b"a=1"]))
def test_route_label_is_starlettes_url_path(path: str, host: bytes | None, query: bytes) -> None:
    scope = {"type": "http", "path": "/" + path, "query_string": query,
             "headers": [] if host is None else [(b"host", host)],
             "server": ("127.0.0.1", 8000) if host != b"test" else None}
    assert _route_label(scope) == URL(scope=scope).path


def test_daemons_run_on_uvloop_where_it_is_installed() -> None:
    from dnanet.service.loop import new_event_loop, run

    async def kind() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert run(kind()) == expected
    loop = new_event_loop()
    try:
        assert loop.run_until_complete(kind()) == expected
    finally:
        loop.close()


def test_in_daemon_thread_returns_raises_and_is_not_waited_for_at_exit() -> None:
    import subprocess
    import sys
    import time

    from dnanet.service.loop import in_daemon_thread, run

    def fail() -> None:
        raise ValueError("no model here")

    async def both() -> tuple[int, str]:
        value = await in_daemon_thread(lambda: 6 * 7, "answer")
        try:
            await in_daemon_thread(fail, "failing")
        except ValueError as exc:
            return value, str(exc)
        raise AssertionError("the error was not raised")

    assert run(both()) == (42, "no model here")
    # A process that gives up waiting (a signal during start-up) exits at once.
    code = ("import asyncio, time\n"
            "from dnanet.service.loop import in_daemon_thread, run\n"
            "async def main():\n"
            "    try:\n"
            "        await asyncio.wait_for(in_daemon_thread(lambda: time.sleep(60), 'x'), 0.2)\n"
            "    except TimeoutError:\n"
            "        print('gave up', flush=True)\n"
            "run(main())\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50)
    assert out.returncode == 0 and out.stdout == "gave up\n", out.stderr
    assert time.monotonic() - t0 < 30  # not the 60 s of the thread


def test_cancel_once_cancels_on_the_first_signal_only() -> None:
    from dnanet.service.loop import cancel_once, run

    async def body() -> int:
        task = asyncio.create_task(asyncio.sleep(3600))
        on_signal = cancel_once(task)
        on_signal()
        on_signal()  # a second Ctrl-C, or SIGTERM after it
        cancelling = task.cancelling()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return cancelling

    assert run(body()) == 1
    cancel_once(None)()  # no task: nothing to cancel, no error


def test_an_idle_keep_alive_connection_outlives_the_clients_pools() -> None:
    """A connection left idle as long as an httpx pool keeps one (5 s) still serves the next
    request: the server keeps idle connections open longer than any dnanet client does."""
    assert (httpx.Limits().keepalive_expiry or 0) < KEEP_ALIVE_S  # challenge sessions are WebSockets
    app = make_app()

    async def body() -> list[bytes]:
        async with serving(app, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            statuses = []
            for pause in (0.0, 5.3):
                await asyncio.sleep(pause)
                writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
                status = await reader.readline()
                statuses.append(status)
                if not status:  # the server closed the connection
                    break
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                assert await reader.readexactly(2) == b"hi"
            writer.close()
            return statuses

    assert asyncio.run(body()) == [b"HTTP/1.1 200 OK\r\n"] * 2
