"""The gateway through the official ``openai`` client: models, embeddings, chat (streamed and
not), API keys, OpenAI-format errors, retries, and an upstream OpenAI-compatible backend."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import httpx
import openai
import pytest
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dnanet.ai.backends import (
    TRIVIAL_CHAT_MODEL,
    TRIVIAL_EMBED_MODEL,
    TrivialBackend,
    UpstreamBackend,
)
from dnanet.errors import ConfigError
from dnanet.gateway.scheduler import NodeStats
from dnanet.ports import free_port
from dnanet.protocol.codec import MAX_MESSAGE_BYTES
from dnanet.service.http import Server, create_app
from gateway_helpers import API_KEY, gateway_config, network, record

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client(base_url: str, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


def test_models_embeddings_and_chat_through_the_openai_client() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()], [TrivialBackend()]]) as net, \
                client(net.base_url) as c:
            models = sorted(m.id for m in (await c.models.list()).data)
            assert models == [TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL]
            assert (await c.models.retrieve(TRIVIAL_EMBED_MODEL)).id == TRIVIAL_EMBED_MODEL

            reference = TrivialBackend()
            one = await c.embeddings.create(model=TRIVIAL_EMBED_MODEL, input="hello")
            assert one.data[0].embedding == pytest.approx(reference.embed_one("hello"))
            many = await c.embeddings.create(model=TRIVIAL_EMBED_MODEL,
                                             input=["a", "b", "c"])
            assert [d.index for d in many.data] == [0, 1, 2]
            assert many.data[2].embedding == pytest.approx(reference.embed_one("c"))

            chat = await c.chat.completions.create(
                model=TRIVIAL_CHAT_MODEL, messages=[{"role": "user", "content": "hi there"}])
            assert chat.choices[0].message.content == reference.answer(
                {"messages": [{"role": "user", "content": "hi there"}]})

            stream = await c.chat.completions.create(
                model=TRIVIAL_CHAT_MODEL, stream=True,
                messages=[{"role": "user", "content": "one two three"}])
            parts = [chunk.choices[0].delta.content or "" async for chunk in stream]
            assert "".join(parts) == reference.answer(
                {"messages": [{"role": "user", "content": "one two three"}]})
            assert len(parts) > 3

    run(go())


def test_base64_embeddings_decode_to_the_float_vector() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            response = await h.post(f"{net.base_url}/embeddings", headers=_auth(), json={
                "model": TRIVIAL_EMBED_MODEL, "input": "x", "encoding_format": "base64"})
            assert response.status_code == 200
            raw = base64.b64decode(response.json()["data"][0]["embedding"])
            vector = struct.unpack(f"<{len(raw) // 4}f", raw)
            assert vector == pytest.approx(TrivialBackend().embed_one("x"), abs=1e-6)

    run(go())


def _auth(key: str = API_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": TRIVIAL_EMBED_MODEL}, "input"),
    ({"model": TRIVIAL_EMBED_MODEL, "input": []}, "input"),
    ({"model": TRIVIAL_EMBED_MODEL, "input": ["ok", 3]}, "input[1]"),
    ({"model": TRIVIAL_EMBED_MODEL, "input": [""]}, "input[0]"),
    ({"model": TRIVIAL_EMBED_MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": TRIVIAL_EMBED_MODEL, "input": "x", "dimensions": 8}, "dimensions"),
])
def test_bad_embedding_requests_are_400_naming_the_field(body: dict[str, Any],
                                                         param: str) -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            response = await h.post(f"{net.base_url}/embeddings", headers=_auth(), json=body)
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["param"] == param
            assert error["type"] == "invalid_request_error"
            assert set(error) == {"message", "type", "param", "code"}

    run(go())


@pytest.mark.parametrize(("body", "param"), [
    ({"model": TRIVIAL_CHAT_MODEL}, "messages"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "robot", "content": "x"}]},
     "messages[0].role"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "x"}],
      "temperature": 3}, "temperature"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "x"}],
      "stream": "yes"}, "stream"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "x"}],
      "max_tokens": 0}, "max_tokens"),
    ({"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2},
     "n"),
])
def test_bad_chat_requests_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            response = await h.post(f"{net.base_url}/chat/completions", headers=_auth(),
                                    json=body)
            assert response.status_code == 400
            assert response.json()["error"]["param"] == param

    run(go())


def test_the_gateways_body_limit_governs_its_routes_in_openai_format() -> None:
    # The app's own limit (MAX_MESSAGE_BYTES, for protocol messages) must not answer first.
    limit = MAX_MESSAGE_BYTES + 1024
    config = gateway_config(max_body_bytes=limit)
    text = "x" * (MAX_MESSAGE_BYTES + 16)
    headers = _auth()

    async def go() -> None:
        async with network([[TrivialBackend()]], config=config) as net, \
                httpx.AsyncClient(base_url=net.base_url, timeout=30) as http:
            # Past the app's limit, within the gateway's: the gateway itself reads and judges
            # it (here: an input item too long, 400 naming it).
            within = await http.post("/embeddings", headers=headers,
                                     json={"model": TRIVIAL_EMBED_MODEL, "input": text})
            assert within.status_code == 400, within.text
            assert within.json()["error"]["param"] == "input[0]"
            over = await http.post("/embeddings", headers=headers, content=b"x" * (limit + 1))
            assert over.status_code == 413
            assert over.json()["error"]["code"] == "request_too_large"
            chat = await http.post("/chat/completions", headers=headers,
                                   content=b"x" * (limit + 1))
            assert (chat.status_code, chat.json()["error"]["code"]) == (413, "request_too_large")

    run(go())


def test_malformed_json_is_400_not_500() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            for path in ("/embeddings", "/chat/completions"):
                for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
                    response = await h.post(f"{net.base_url}{path}", headers=_auth(),
                                            content=raw)
                    assert response.status_code == 400, (path, raw)
                    assert response.json()["error"]["type"] == "invalid_request_error"

    run(go())


def test_unknown_model_is_404_through_the_client() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, client(net.base_url) as c:
            with pytest.raises(openai.NotFoundError) as caught:
                await c.embeddings.create(model="no-such-model", input="x")
            assert caught.value.code == "model_not_found"
            with pytest.raises(openai.NotFoundError):
                await c.models.retrieve("no-such-model")

    run(go())


def test_wrong_or_missing_api_key_is_401() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net:
            async with client(net.base_url, key="dn-wrong") as c:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await c.embeddings.create(model=TRIVIAL_EMBED_MODEL, input="x")
                assert caught.value.code == "invalid_api_key"
            async with httpx.AsyncClient() as h:
                response = await h.get(f"{net.base_url}/models")
                assert response.status_code == 401

    run(go())


def test_no_eligible_node_is_503_with_a_retry_hint() -> None:
    failing = {f"0x{1:040x}": NodeStats(score=100, failing=True)}

    async def go() -> None:
        async with network([[TrivialBackend()]], stats=failing) as net:
            async with httpx.AsyncClient() as h:
                response = await h.post(f"{net.base_url}/embeddings", headers=_auth(),
                                        json={"model": TRIVIAL_EMBED_MODEL, "input": "x"})
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) > 0
                assert response.json()["error"]["code"] == "no_node_available"
            async with client(net.base_url) as c:
                with pytest.raises(openai.InternalServerError) as caught:
                    await c.embeddings.create(model=TRIVIAL_EMBED_MODEL, input="x")
                assert caught.value.status_code == 503

    run(go())


def test_jailed_inactive_and_unregistered_nodes_are_not_scheduled() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net:
            # The same live node, listed again as jailed and inactive: never scheduled.
            await net.gateway.refresh()
            assert set(net.gateway.scheduler.nodes) == {f"0x{1:040x}"}
        async with network([[TrivialBackend()], [TrivialBackend()]]) as net:
            jailed = record(f"0x{9:040x}", net.node_urls[0], jailed=True)
            inactive = record(f"0x{8:040x}", net.node_urls[1], active=False)
            net.gateway.directory = type(net.gateway.directory)([jailed, inactive])
            await net.gateway.refresh()
            assert net.gateway.scheduler.nodes == {}
            async with client(net.base_url) as c:
                with pytest.raises(openai.NotFoundError):
                    await c.embeddings.create(model=TRIVIAL_EMBED_MODEL, input="x")

    run(go())


def test_a_dead_node_is_retried_elsewhere_and_cooled_down() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net:
            dead = record(f"0x{5:040x}", f"http://127.0.0.1:{free_port()}")
            gw = net.gateway
            await gw.refresh()
            # The dead node was listed when it answered; it has since gone away.
            from dnanet.gateway.scheduler import NodeState

            gw.scheduler.nodes[dead.address] = NodeState(
                dead.address, dead.endpoint, frozenset({TRIVIAL_EMBED_MODEL}),
                NodeStats(score=1_000_000))
            async with client(net.base_url) as c:
                for i in range(6):
                    out = await c.embeddings.create(model=TRIVIAL_EMBED_MODEL, input=f"t{i}")
                    assert len(out.data) == 1
            state = gw.scheduler.nodes[dead.address]
            assert state.cooldown_until > 0  # failed threshold times, cooling down
            assert state.in_flight == 0

    run(go())


def test_node_side_errors_are_openai_format() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            node = net.node_urls[0]
            response = await h.post(f"{node}/v1/embeddings", json={"model": "x", "input": "y"})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "model_not_found"
            response = await h.post(f"{node}/v1/chat/completions", json={"model": "x"})
            assert response.status_code == 400
            assert response.json()["error"]["param"] == "messages"

    run(go())


# -- an upstream OpenAI-compatible server (what operators run: vLLM, llama.cpp, Ollama) ---------

UPSTREAM_MODELS = ["llama-3.2-1b-instruct", "nomic-embed-text"]


def upstream_app() -> Any:
    app = create_app("fake upstream")
    trivial = TrivialBackend(salt=b"upstream")

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in UPSTREAM_MODELS]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = json.loads(await request.body())
        vectors = await trivial.embeddings(body["model"], body["input"])
        return {"object": "list", "data": [{"index": i, "embedding": v, "object": "embedding"}
                                           for i, v in enumerate(vectors)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        if body.get("stream"):
            async def events() -> AsyncIterator[bytes]:
                async for chunk in trivial.chat_stream(body["model"], body):
                    yield b"data: " + chunk + b"\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(await trivial.chat(body["model"], body))

    return app


def test_upstream_backend_models_are_advertised_and_served() -> None:
    async def go() -> None:
        upstream = Server(upstream_app(), "127.0.0.1", free_port())
        await upstream.start()
        try:
            backend = UpstreamBackend(upstream.url)
            async with network([[backend]]) as net, client(net.base_url) as c:
                assert sorted(m.id for m in (await c.models.list()).data) == UPSTREAM_MODELS
                reference = TrivialBackend(salt=b"upstream")
                out = await c.embeddings.create(model="nomic-embed-text", input=["q"])
                assert out.data[0].embedding == pytest.approx(reference.embed_one("q"))
                messages: Any = [{"role": "user", "content": "tell me"}]
                chat = await c.chat.completions.create(model=UPSTREAM_MODELS[0],
                                                       messages=messages)
                assert chat.choices[0].message.content == reference.answer(
                    {"messages": messages})
                stream = await c.chat.completions.create(model=UPSTREAM_MODELS[0],
                                                         messages=messages, stream=True)
                text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
                assert text == reference.answer({"messages": messages})
        finally:
            await upstream.stop()

    run(go())


def test_an_unreachable_upstream_fails_at_start_up() -> None:
    async def go() -> None:
        backend = UpstreamBackend(f"http://127.0.0.1:{free_port()}", timeout_s=2)
        try:
            with pytest.raises(ConfigError, match="did not list its models"):
                await backend.load()
        finally:
            await backend.close()

    run(go())
