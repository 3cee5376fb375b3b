"""Every route of every daemon, fed junk over real HTTP: never a 500, and a refusal names what
was wrong.

The Validator (once verifying on a thread, once in a worker process, whose intake pre-scans
each body), a mixer (with its OpenAI-compatible gateway) and a node daemon (challenge API,
status and model routes) serve on loopback from one background event loop. For each route their OpenAPI specs
declare, hypothesis builds requests: path parameters of any text, the route's query parameters
and others with any values, bodies of random bytes, random JSON, or objects with the fields the
route's schema names holding random values, and documents nested 100,000 deep; with and without
the gateway's API key. Each answer must be below 500; a 400, 413 or 422 must be dnanet's JSON
error with a ``field`` (or OpenAI's, on the gateway's and the node's model routes).

The test imports eth_account, as each daemon does through web3: it raises the recursion limit to
100,000, and json's C parser then overflows the C stack on a deep document (the process dies)
unless the document is refused before parsing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import eth_account  # noqa: F401  raises the recursion limit, as every daemon's chain client does
import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dnanet.ai.backends import (
    TRIVIAL_CHAT_MODEL,
    TRIVIAL_EMBED_MODEL,
    BackendSet,
    TrivialBackend,
)
from dnanet.mixer.daemon import MixerDaemon
from dnanet.node.daemon import NodeDaemon
from dnanet.node.hardware import Hardware
from dnanet.service.loop import new_event_loop
from dnanet.validator.daemon import ValidatorDaemon
from gateway_helpers import API_KEY, gateway_config
from validator_helpers import build_network, last_round_start, seeded_identity

LABEL = "fuzz"


@dataclass(frozen=True)
class Route:
    daemon: str
    base_url: str
    method: str
    path: str
    query: tuple[str, ...]
    body_fields: tuple[str, ...]
    has_body: bool

    def __str__(self) -> str:
        return f"{self.daemon} {self.method.upper()} {self.path}"


class Loop:
    """An event loop in a thread: the daemons run there while hypothesis drives requests."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _routes(daemon: str, base_url: str, spec: dict[str, Any]) -> list[Route]:
    out = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            query = tuple(p["name"] for p in operation.get("parameters", [])
                          if p.get("in") == "query")
            body = operation.get("requestBody")
            fields: tuple[str, ...] = ()
            if body is not None:
                schema = body.get("content", {}).get("application/json", {}).get("schema", {})
                fields = tuple(schema.get("properties", {}))
            out.append(Route(daemon, base_url, method, path, query, fields,
                             body is not None or method == "post"))
    return out


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Route]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    gw, _ = build_network(mixers=4, nodes=5, label=LABEL)
    gw.advance_to(last_round_start(gw, 0))
    loop = Loop()
    validator = ValidatorDaemon(gw, root / "validator", port=0, run_settlement=False)
    pooled = ValidatorDaemon(gw, root / "pooled", port=0, run_settlement=False, workers=1)
    mixer = MixerDaemon(gw.mixers[0], gw, root / "mixer", validator_url="http://127.0.0.1:9",
                        gateway_config=gateway_config())
    node = NodeDaemon(seeded_identity(f"{LABEL}/node"), gw, root / "node",  # type: ignore[arg-type]
                      device="cpu", backends=BackendSet([TrivialBackend()]), api_key=API_KEY,
                      hardware=Hardware(cpu_model="fuzz", cpu_cores=2, memory_bytes=1 << 30,
                                        gpu=None))

    async def start() -> None:
        await validator.start()
        await pooled.start()
        # Their HTTP only: no rounds against the fake nodes, no registration.
        await mixer.server.start()
        await node.server.start()

    async def stop() -> None:
        await validator.stop()
        await pooled.stop()
        await mixer.stop()
        await node.stop()

    loop.call(start())
    try:
        found = []
        for name, url, app in [("validator", validator.url, validator.app),
                               ("validator --workers 1", pooled.url, pooled.app),
                               ("mixer", mixer.url, mixer.app), ("node", node.url, node.app)]:
            found += _routes(name, url, app.openapi())
        yield found
    finally:
        loop.call(stop())
        loop.close()


# -- requests -----------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2, 2**70), st.floats(allow_nan=False),
    st.text(max_size=30), st.sampled_from(["0x", "0x" + "ab" * 20, "0x" + "cd" * 32, "-1", "1e9",
                                           "NaN", "\u0000", "%00", "../..", "0X" + "AB" * 32]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)
_segment = st.one_of(st.text(max_size=40), st.sampled_from([
    "0", "1", "-1", "99999999999999999999", "0x" + "ab" * 20, "0x" + "AB" * 32, "0x12", "%2F",
    "..", "a b", "é", "0x" + "ab" * 32]))


# OpenAI requests close to valid ones, so that the checks past the first reach them too:
# served models, streamed or not, messages and inputs of any shape.
_MODELS = st.sampled_from([TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL, "no-such-model"])
_OPENAI = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {"model": _MODELS, "messages": st.one_of(_json, st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "x"]), "content": _json}), max_size=3))},
        optional={"stream": st.one_of(st.booleans(), _scalars), "max_tokens": _scalars,
                  "temperature": _scalars}),
    "/v1/embeddings": st.fixed_dictionaries(
        {"model": _MODELS, "input": st.one_of(_json, st.lists(st.text(max_size=20),
                                                               max_size=4))},
        optional={"encoding_format": st.sampled_from(["float", "base64", "x"])}),
}


def _body(route: Route) -> st.SearchStrategy[bytes | None]:
    if not route.has_body:
        return st.none()
    shaped = (st.fixed_dictionaries({k: _json for k in route.body_fields}).map(
        lambda d: json.dumps(d).encode()) if route.body_fields else st.nothing())
    if route.path in _OPENAI:
        shaped = _OPENAI[route.path].map(lambda d: json.dumps(d).encode())
    return st.one_of(
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v).encode()),
        shaped,
        st.sampled_from([b"{" * 5000, b"[" * 100_000, b'{"a":' * 60_000]),
    )


@st.composite
def requests(draw: st.DrawFn, route: Route) -> tuple[str, dict[str, str], dict[str, str],
                                                       bytes | None]:
    path = route.path
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + urllib.parse.quote(draw(_segment), safe="") + path[end + 1:]
    names = st.one_of(st.sampled_from(route.query), st.text(max_size=8)) if route.query \
        else st.text(max_size=8)
    query = draw(st.dictionaries(names, _segment, max_size=3))
    headers = {"authorization": f"Bearer {API_KEY}"} if draw(st.booleans()) else {}
    body = draw(_body(route))
    if body is not None:
        headers["content-type"] = draw(st.sampled_from(
            ["application/json", "text/plain", "application/octet-stream"]))
    return path, query, headers, body


def _check(route: Route, response: httpx.Response) -> None:
    what = f"{route} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, what
    if response.status_code in (400, 413, 422) and response.headers.get(
            "content-type", "").startswith("text/html"):
        # The Validator's dashboard pages: an error page that says what was wrong.
        assert 'id="error-message"' in response.text, what
    elif response.status_code in (400, 413, 422):
        error = response.json().get("error")
        assert isinstance(error, dict) and error.get("type") and error.get("message"), what
        # dnanet names the field; OpenAI's format (the model routes) the parameter.
        assert "field" in error or "param" in error, what


def test_the_daemons_declare_their_routes(routes: list[Route]) -> None:
    names = {str(r) for r in routes}
    for expected in ("validator POST /v1/certificates", "validator GET /v1/batches/{batch_hash}",
                     "validator GET /", "mixer POST /v1/batches", "mixer GET /v1/status",
                     "mixer POST /v1/embeddings", "node POST /v1/challenges",
                     "node GET /v1/status", "node POST /v1/chat/completions"):
        assert expected in names, sorted(names)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure names its draws
          derandomize=True)
@given(data=st.data())
def test_no_route_answers_junk_with_a_500(routes: list[Route], data: st.DataObject) -> None:
    """Each example sends one request to every route."""
    with httpx.Client(timeout=30) as client:
        for route in routes:
            path, query, headers, body = data.draw(requests(route), label=str(route))
            response = client.request(route.method.upper(), route.base_url + path,
                                      params=query, headers=headers, content=body)
            _check(route, response)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 60_000],
                         ids=["lists", "objects"])
def test_every_route_with_a_body_refuses_a_deeply_nested_document(routes: list[Route],
                                                                   body: bytes) -> None:
    """Sent to every route that takes a body, with the API key: refused, and every daemon
    still answers (a crash would also fail every later request)."""
    with httpx.Client(timeout=30) as client:
        for route in routes:
            if route.has_body and "{" not in route.path:
                response = client.request(
                    route.method.upper(), route.base_url + route.path, content=body,
                    headers={"authorization": f"Bearer {API_KEY}",
                             "content-type": "application/json"})
                _check(route, response)
                assert 400 <= response.status_code < 500, f"{route} -> {response.status_code}"
        for base_url in {route.base_url for route in routes}:
            assert client.get(base_url + "/health").status_code == 200, base_url
