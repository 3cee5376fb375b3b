"""The gateway in each mixer: OpenAI-compatible ``/v1/models``, ``/v1/embeddings``,
``/v1/chat/completions`` and ``/v1/completions`` over the network's nodes.

Each request is authenticated (``Authorization: Bearer <key>``), validated, routed by the
:class:`~dnanet.gateway.scheduler.Scheduler` to a registered, healthy node serving the model,
and retried on another node on a timeout, a transport error or a malformed answer. Canaries
(:mod:`dnanet.gateway.canary`; LLM ones in :mod:`dnanet.gateway.llm_canary`) ride along at ``canary_rate`` of the traffic and at least once
per ``canary_interval_s`` per node. Errors are OpenAI's (see :mod:`dnanet.ai.openai_format`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dnanet.ai.completions import COMPLETIONS_PATH, check_text_completion, parse_completion
from dnanet.ai.logprobs import compute_node_request, strip_event_logprobs, strip_logprobs
from dnanet.ai.openai_format import (
    MAX_AI_BODY_BYTES,
    ApiError,
    check_completion,
    check_vectors,
    count_tokens,
    embeddings_response,
    exempt_from_app_limit,
    model_not_found,
    models_list,
    no_node,
    parse_chat,
    parse_embeddings,
    read_request,
)
from dnanet.errors import CodecError
from dnanet.gateway.canary import (
    CanaryBook,
    ReferenceModels,
    compare_embeddings,
    judge,
    make_canary,
)
from dnanet.gateway.llm_canary import LlmCanaries, LlmCanary, describe_user_request
from dnanet.gateway.llm_speed import is_long_request
from dnanet.gateway.scheduler import (
    Lease,
    NodeState,
    NodeStats,
    Scheduler,
    SchedulingPolicy,
)
from dnanet.protocol.codec import load_json
from dnanet.service.http import create_app
from dnanet.service.network import NodeRecord

log = logging.getLogger("dnanet.gateway")

T = TypeVar("T")
_JSON = {"content-type": "application/json"}
_LARGE_BODY_BYTES = 1 << 20
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
_MID_STREAM_ERROR = (b'data: {"error": {"message": "the node failed mid-stream", "type": '
                     b'"api_error", "param": null, "code": "node_failed"}}\n\n')
_REQUEST_FAULTS = (400, 413, 422)
"""Node statuses that are the request's fault: answered to the client as they are."""
_UNAUTHORIZED = ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
MAX_MODEL_LIST_BYTES = 1 << 20
"""A node's model list or error answer, at most."""
MAX_EVENT_LINE_BYTES = 1 << 20
"""One line of a node's event stream, at most."""
MAX_PENDING_AUDITS = 4
"""Users' answers waiting for their audit, at most (more are not drawn meanwhile): the
reference checks one at a time, and traffic must not queue work on it without end."""


class NodeAnswerTooLarge(aiohttp.ClientPayloadError):
    """A node sent more than the gateway takes: the node's failure, like a broken answer (and
    not held in memory: a node must not be able to exhaust the mixer's)."""


async def _read_answer(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a node's answer; NodeAnswerTooLarge past ``limit`` bytes."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise NodeAnswerTooLarge(f"node answered {declared} bytes, more than {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise NodeAnswerTooLarge(f"node answered more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class GatewayConfig:
    api_keys: frozenset[str] = frozenset()
    """Accepted keys; empty means an open gateway (local use only)."""
    policy: SchedulingPolicy = field(default_factory=SchedulingPolicy)
    request_timeout_s: float = 60.0
    refresh_s: float = 5.0
    models_timeout_s: float = 3.0
    canary_rate: float = 0.05
    """Fraction of routed requests followed by a canary to a node the scheduler draws."""
    canary_interval_s: float = 60.0
    """Every node gets at least one canary this often (0: only traffic-driven canaries)."""
    audit_rate: float = 0.05
    """Fraction of users' answers that the gateway checks afterwards against its own
    reference, for the models it holds one of (embeddings; the built-in LLM at any
    temperature: docs/scheduling.md, "Audits of users' answers"); a failed audit counts as a
    failed canary. Unlike a canary, an audited request is a user's: a node cannot tell it."""
    canary_tolerance: float = 0.99
    """Minimum cosine similarity of a canary embedding with the reference."""
    max_body_bytes: int = MAX_AI_BODY_BYTES
    max_answer_bytes: int = 4 * MAX_AI_BODY_BYTES
    """A node's whole answer at most (embeddings of a full request take about 4x its bytes);
    a node that sends more has failed, as with a broken answer."""
    seed: int | None = None
    node_credential: Callable[[str, str, bytes], Mapping[str, str]] | None = None
    """(method, url, body) -> headers proving the request comes from a mixer of the set
    (``dnanet.mixer.node_client.NodeCredentials``): nodes' AI endpoints require them."""


class NodeDirectory(Protocol):
    """Where the gateway learns the registered nodes and their measured stats."""

    async def records(self) -> list[NodeRecord]: ...
    def stats(self) -> dict[str, NodeStats]: ...


class StaticDirectory:
    """A fixed node set (tests, benchmarks)."""

    def __init__(self, records: Sequence[NodeRecord],
                 stats: dict[str, NodeStats] | None = None) -> None:
        self._records = list(records)
        self._stats = dict(stats or {})

    async def records(self) -> list[NodeRecord]:
        return list(self._records)

    def stats(self) -> dict[str, NodeStats]:
        return dict(self._stats)


class CallbackDirectory:
    """Nodes from a blocking call (the chain, run in a worker thread) and a stats callback."""

    def __init__(self, nodes: Callable[[], list[NodeRecord]],
                 stats: Callable[[], dict[str, NodeStats]]) -> None:
        self._nodes = nodes
        self._stats = stats

    async def records(self) -> list[NodeRecord]:
        return await asyncio.to_thread(self._nodes)

    def stats(self) -> dict[str, NodeStats]:
        return self._stats()


class Gateway:
    """Routes OpenAI requests to nodes; ``mount(app)`` adds the routes to a FastAPI app."""

    def __init__(self, config: GatewayConfig, directory: NodeDirectory, *,
                 canaries: CanaryBook | None = None, references: ReferenceModels | None = None,
                 http: aiohttp.ClientSession | None = None,
                 llm_canaries: LlmCanaries | None = None) -> None:
        self.config = config
        self.directory = directory
        self.rng = random.Random(config.seed)
        self.scheduler = Scheduler(config.policy, rng=self.rng)
        self.canaries = canaries or CanaryBook()
        self.references = references if references is not None else ReferenceModels()
        self.llm_canaries = llm_canaries if llm_canaries is not None else LlmCanaries()
        self._audits = 0
        self.audited = 0
        """Users' answers audited (checked by the reference) so far."""
        self.scheduler.speeds = self.llm_canaries.speeds
        self._http = http
        self._refreshed = False
        self._refresh_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client to the nodes, created on first use (it belongs to the serving loop).

        aiohttp rather than httpx: measured in ``bench/gateway.py``, httpx's connection pool
        cost the gateway ~5 ms of CPU per forwarded request at 32 in flight.
        """
        if self._http is None:
            self._http = open_gateway_session(self.config.request_timeout_s)
        return self._http

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="gateway")

    async def stop(self) -> None:
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.close()

    async def _loop(self) -> None:
        since_canaries = 0.0
        while True:
            try:
                await self.refresh()
                since_canaries += self.config.refresh_s
                if self.config.canary_interval_s and \
                        since_canaries >= self.config.canary_interval_s:
                    since_canaries = 0.0
                    await self.canary_sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the gateway keeps serving on its last view
                log.warning("gateway refresh failed: %s", exc)
            await asyncio.sleep(self.config.refresh_s)

    async def refresh(self) -> None:
        """Re-read the registered nodes, the models each serves, and their measured stats."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            records = [r for r in await self.directory.records() if r.active and not r.jailed]
            models_timeout = aiohttp.ClientTimeout(total=self.config.models_timeout_s)

            async def probe(record: NodeRecord) -> NodeState | None:
                try:
                    async with self.http.get(f"{record.endpoint.rstrip('/')}/v1/models",
                                             timeout=models_timeout) as response:
                        content = await _read_answer(response, MAX_MODEL_LIST_BYTES)
                    data = load_json(content, max_bytes=None) if response.status == 200 else {}
                    models = frozenset(str(m["id"]) for m in data.get("data", [])
                                       if isinstance(m, dict) and isinstance(m.get("id"), str))
                except (*_TRANSPORT_ERRORS, CodecError, ValueError, AttributeError):
                    return None
                return NodeState(address=record.address.lower(),
                                 endpoint=record.endpoint.rstrip("/"), models=models)

            states = [s for s in await asyncio.gather(*(probe(r) for r in records))
                      if s is not None and s.models]
            self.scheduler.update(states)
            # Parsing the stored reports is CPU work: keep it off the serving loop.
            stats = await asyncio.to_thread(self.directory.stats)
            self.scheduler.apply_stats({k.lower(): v for k, v in stats.items()})
            for state in states:
                if self.canaries.pending(state.address):
                    self.scheduler.mark_canary(state.address, passed=False)
            self._refreshed = True

    async def _fresh(self) -> None:
        if not self._refreshed:
            await self.refresh()

    # -- routing ----------------------------------------------------------------------------------
    async def _route(self, model: str, path: str, body: bytes, *, interactive: bool,
                     parse: Callable[[Any], T], long: bool | None = None
                     ) -> tuple[NodeState, Any, T]:
        """POST ``body`` to nodes serving ``model`` until one answers well."""
        attempts = _Attempts()
        async for lease in self._candidates(model, body, interactive, attempts, long):
            node = lease.node
            ok = False
            try:
                status, content = await self._post(node.endpoint + path, body)
                if status == 200:
                    data = load_json(content, max_bytes=None)
                    parsed = parse(data)
                    ok = True
                    return node, data, parsed
                if status in _REQUEST_FAULTS:
                    ok = True  # the request's fault, not the node's: answer it as is
                    raise _node_error(status, content)
                attempts.last = f"node answered HTTP {status}"
            except (*_TRANSPORT_ERRORS, CodecError, ValueError, TypeError, KeyError) as exc:
                attempts.last = _failure(exc)
            finally:
                self.scheduler.release(lease, ok=ok)
        raise attempts.exhausted(model)

    async def _open(self, url: str, body: bytes) -> aiohttp.ClientResponse:
        """POST a JSON ``body``; the node's response once its status and headers arrived.

        The node has ``request_timeout_s`` to take the request and start answering (a node
        that does not read a large body included); each later read of the answer gets as long
        again (the session's ``sock_read``).
        """
        # aiohttp takes a large body as a stream, written in chunks that yield to the loop.
        data = body if len(body) <= _LARGE_BODY_BYTES else io.BytesIO(body)
        async with asyncio.timeout(self.config.request_timeout_s):
            sign = self.config.node_credential
            headers = _JSON if sign is None else {**_JSON, **sign("POST", url, body)}
            return await self.http.post(url, data=data, headers=headers)

    async def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON ``body``; the status and the whole answer."""
        async with await self._open(url, body) as response:
            return response.status, await _read_answer(response, self.config.max_answer_bytes)

    async def _candidates(self, model: str, body: bytes, interactive: bool,
                          attempts: _Attempts, long: bool | None = None
                          ) -> AsyncIterator[Lease]:
        """Nodes to try for one request, best first by the scheduling rule, each acquired
        (the caller releases the lease); at most ``max_attempts`` of them."""
        await self._fresh()
        if not self.scheduler.serving(model):
            raise model_not_found(model)
        for _ in range(self.config.policy.max_attempts):
            node = self.scheduler.pick(model, payload_bytes=len(body), interactive=interactive,
                                       exclude=attempts.tried, long=long)
            if node is None:
                return
            attempts.tried.append(node.address)
            yield self.scheduler.acquire(node)

    def _is_audit_drawn(self, has_reference: bool) -> bool:
        """Whether to audit this user's answer: drawn at ``audit_rate`` for a model the
        mixer holds a reference of, while fewer than MAX_PENDING_AUDITS are being checked."""
        return self.config.audit_rate > 0 and has_reference \
            and self._audits < MAX_PENDING_AUDITS \
            and self.rng.random() < self.config.audit_rate

    def _audit_draw(self, model: str, path: str, node_body: dict[str, Any]
                    ) -> LlmCanary | None:
        """A user's LLM request to audit, as the check reads it; None: not this one."""
        if not self._is_audit_drawn(self.llm_canaries.has(model)):
            return None
        return describe_user_request(model, path, node_body)

    async def _audit(self, node: NodeState, request: LlmCanary,
                     events: list[tuple[float, Any]], sent_at: float) -> None:
        """Check a user's LLM answer as a canary's (``LlmCanaries.judge``)."""
        async def check() -> tuple[bool, str | None]:
            return await self.llm_canaries.judge(node.address, request, events, sent_at,
                                                 None)
        await self._audited(node, request.model, check)

    async def _audit_embeddings(self, node: NodeState, model: str, inputs: list[str],
                                vectors: Any) -> None:
        """Check a user's embeddings against the reference's, as a canary's are."""
        async def check() -> tuple[bool, str | None]:
            backend = await self.references.backend(model)
            if backend is None:
                return False, None
            want = await backend.embeddings(model, inputs)
            return True, compare_embeddings(vectors, want, self.config.canary_tolerance)
        await self._audited(node, model, check)

    async def _audited(self, node: NodeState, model: str,
                       check: Callable[[], Awaitable[tuple[bool, str | None]]]) -> None:
        """Run one audit's ``check`` (judged, failure reason); a failure is a failed
        canary of the node, named as an audit."""
        self._audits += 1
        try:
            judged, reason = await check()
        except Exception as exc:  # the reference failed: no verdict on the node
            log.warning("audit of %s's answer could not run: %s", node.address[:10], exc)
            return
        finally:
            self._audits -= 1
        self.audited += judged
        if judged:
            self._canary_verdict(node, model, reason and f"audit of a user's answer: {reason}")

    def _maybe_canary(self, model: str) -> None:
        if self.config.canary_rate > 0 and self.rng.random() < self.config.canary_rate \
                and self._has_reference(model):
            node = self.scheduler.draw(model)
            if node is not None:
                self._spawn(self.run_canary(node, model))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- canaries ---------------------------------------------------------------------------------
    def _has_reference(self, model: str) -> bool:
        return self.references.has(model) or self.llm_canaries.has(model)

    async def run_canary(self, node: NodeState, model: str) -> bool | None:
        """Send one canary to ``node``; True passed, False failed (recorded), None no verdict
        (no reference, or the node could not be reached: that is a plain failure)."""
        if self.llm_canaries.has(model):
            lease = self.scheduler.acquire(node)
            delivered = False
            try:
                delivered, reason = await self.llm_canaries.run(
                    node.address, node.endpoint, (node.stats.rtt_us or 0) / 1e6, self.rng,
                    self._open, self.config.max_answer_bytes)
            finally:
                self.scheduler.release(lease, ok=delivered)
            return self._canary_verdict(node, model, reason) if delivered else None
        canary = await make_canary(self.references, model, self.rng)
        if canary is None:
            return None
        # The same normalization, serialization and headers as a user's request.
        if canary.kind == "chat":
            path, body = "/v1/chat/completions", json.dumps(
                parse_chat(json.dumps(canary.body).encode()).body).encode()
        else:
            path, body = "/v1/embeddings", json.dumps(
                parse_embeddings(json.dumps(canary.body).encode()).node_body()).encode()
        lease = self.scheduler.acquire(node)
        ok = False
        try:
            status, content = await self._post(node.endpoint + path, body)
            ok = status == 200
            if not ok:
                return None
            try:
                data = load_json(content, max_bytes=None)
                answer: Any = (check_completion(data) if canary.kind == "chat"
                               else check_vectors(data, len(canary.body["input"])))
                reason = judge(canary, answer, self.config.canary_tolerance)
            except (CodecError, ValueError, TypeError) as exc:
                reason = f"malformed answer: {exc}"
        except (*_TRANSPORT_ERRORS, ValueError) as exc:
            log.info("canary to %s not delivered: %r", node.address[:10], exc)
            return None
        finally:
            self.scheduler.release(lease, ok=ok)
        return self._canary_verdict(node, model, reason)

    def _canary_verdict(self, node: NodeState, model: str, reason: str | None) -> bool:
        """Record a delivered canary's verdict (``reason`` None: it passed)."""
        if reason is not None:
            self.canaries.record(node.address, model, reason)
            self.scheduler.mark_canary(node.address, passed=False)
            return False
        self.canaries.passed += 1
        if not self.canaries.pending(node.address):
            self.scheduler.mark_canary(node.address, passed=True)
        return True

    async def canary_sweep(self) -> None:
        """One canary to every node for one of its models that has a reference."""
        jobs = []
        for node in list(self.scheduler.nodes.values()):
            models = sorted(m for m in node.models if self._has_reference(m))
            if models:
                jobs.append(self.run_canary(node, self.rng.choice(models)))
        await asyncio.gather(*jobs, return_exceptions=True)

    # -- HTTP -------------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        keys = self.config.api_keys
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(
                hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys):
            raise _UNAUTHORIZED

    def mount(self, app: FastAPI) -> None:
        """Add ``/v1/models``, ``/v1/embeddings``, ``/v1/chat/completions`` and
        ``/v1/completions`` to ``app``.

        The POST routes enforce ``max_body_bytes`` themselves (a 413 in OpenAI's format), in
        place of the app's own body limit."""
        exempt_from_app_limit(app)

        @app.get("/v1/models", tags=["gateway"])
        async def models(request: Request) -> Response:
            try:
                self.authorize(request)
                await self._fresh()
            except ApiError as exc:
                return exc.response()
            return JSONResponse(models_list(self.scheduler.models(), "dnanet"))

        @app.get("/v1/models/{model:path}", tags=["gateway"])
        async def model(model: str, request: Request) -> Response:
            try:
                self.authorize(request)
                await self._fresh()
                if model not in self.scheduler.models():
                    raise model_not_found(model)
            except ApiError as exc:
                return exc.response()
            return JSONResponse(models_list([model], "dnanet")["data"][0])

        @app.post("/v1/embeddings", tags=["gateway"])
        async def embeddings(request: Request) -> Response:
            try:
                self.authorize(request)
                req = parse_embeddings(await read_request(request, self.config.max_body_bytes))
                body = json.dumps(req.node_body()).encode()
                interactive = _interactive(request, default=False)
                audit = self._is_audit_drawn(self.references.has(req.model)
                                             and not self.references.is_chat(req.model))
                node, _data, vectors = await self._route(
                    req.model, "/v1/embeddings", body, interactive=interactive,
                    parse=lambda d: check_vectors(d, len(req.inputs)))
            except ApiError as exc:
                return exc.response()
            self._maybe_canary(req.model)
            if audit:
                self._spawn(self._audit_embeddings(node, req.model, req.inputs, vectors))
            return JSONResponse(embeddings_response(req.model, vectors, req.encoding_format,
                                                    count_tokens(req.inputs)))

        @app.post("/v1/chat/completions", tags=["gateway"])
        async def chat(request: Request) -> Response:
            try:
                self.authorize(request)
                req = parse_chat(await read_request(request, self.config.max_body_bytes))
                node_body, strip = compute_node_request(req.body, chat=True, model=req.model)
                body = json.dumps(node_body).encode()
                interactive = _interactive(request, default=True)
                long = is_long_request(req.body.get("max_completion_tokens")
                                       or req.body.get("max_tokens"), interactive=interactive)
                audit = self._audit_draw(req.model, "/v1/chat/completions", node_body)
                if req.stream:
                    return await self._stream(req.model, body, interactive, long=long,
                                              strip=strip, audit=audit)
                sent_at = time.monotonic()
                node, data, _content = await self._route(
                    req.model, "/v1/chat/completions", body, interactive=interactive,
                    parse=check_completion, long=long)
            except ApiError as exc:
                return exc.response()
            self._maybe_canary(req.model)
            if audit is not None:
                self._spawn(self._audit(node, audit, [(time.monotonic(), data)], sent_at))
            return JSONResponse(strip_logprobs(data) if strip else data)

        @app.post(COMPLETIONS_PATH, tags=["gateway"])
        async def completions(request: Request) -> Response:
            try:
                self.authorize(request)
                req = parse_completion(await read_request(request,
                                                          self.config.max_body_bytes))
                node_body, strip = compute_node_request(req.body, chat=False, model=req.model)
                body = json.dumps(node_body).encode()
                interactive = _interactive(request, default=True)
                long = is_long_request(req.body.get("max_tokens"), interactive=interactive)
                audit = self._audit_draw(req.model, COMPLETIONS_PATH, node_body)
                if req.stream:
                    return await self._stream(req.model, body, interactive, long=long,
                                              path=COMPLETIONS_PATH, strip=strip, audit=audit)
                sent_at = time.monotonic()
                node, data, _text = await self._route(
                    req.model, COMPLETIONS_PATH, body, interactive=interactive,
                    parse=check_text_completion, long=long)
            except ApiError as exc:
                return exc.response()
            self._maybe_canary(req.model)
            if audit is not None:
                self._spawn(self._audit(node, audit, [(time.monotonic(), data)], sent_at))
            return JSONResponse(strip_logprobs(data) if strip else data)

    async def _stream(self, model: str, body: bytes, interactive: bool, *,
                      long: bool | None = None,
                      path: str = "/v1/chat/completions", strip: bool = False,
                      audit: LlmCanary | None = None) -> Response:
        """Open a stream on a node (retrying others until one sends its first event);
        ``strip``: take the logprobs the gateway asked for out of its events; ``audit``: check
        the whole answer afterwards."""
        attempts = _Attempts()
        sent_at = time.monotonic()
        async for lease in self._candidates(model, body, interactive, attempts, long):
            node = lease.node
            response: aiohttp.ClientResponse | None = None
            handed_over = False  # to the relay, which then releases the node
            ok = False
            try:
                response = await self._open(node.endpoint + path, body)
                if response.status == 200:
                    lines = _event_lines(response.content)
                    first = await anext(lines)
                    handed_over = True
                    on_answer = None
                    if audit is not None:
                        def on_answer(events: list[tuple[float, Any]],
                                      node: NodeState = node) -> None:
                            self._spawn(self._audit(node, audit, events, sent_at))
                    return _RelayResponse(self.scheduler, lease, response, first, lines,
                                          strip=strip, on_answer=on_answer,
                                          answer_limit=self.config.max_answer_bytes)
                if response.status in _REQUEST_FAULTS:
                    content = await _read_answer(response, MAX_MODEL_LIST_BYTES)
                    ok = True  # the request's fault, not the node's: answer it as is
                    raise _node_error(response.status, content)
                attempts.last = f"node answered HTTP {response.status}"
            except StopAsyncIteration:
                attempts.last = "node ended the stream before its first event"
            except _TRANSPORT_ERRORS as exc:
                attempts.last = _failure(exc)
            finally:
                if not handed_over:
                    if response is not None:
                        response.close()
                    self.scheduler.release(lease, ok=ok)
        raise attempts.exhausted(model)


class _RelayResponse(StreamingResponse):
    """A node's event stream relayed to the client, one event per line, with an error event if
    the node fails mid-stream. The node's lease is released exactly once however the response
    ends: at the stream's end or the node's failure (before the client sees the end), or when
    the client went away, even before the stream began (not the node's fault)."""

    def __init__(self, scheduler: Scheduler, lease: Lease, upstream: aiohttp.ClientResponse,
                 first: bytes, lines: AsyncIterator[bytes], *, strip: bool = False,
                 on_answer: Callable[[list[tuple[float, Any]]], None] | None = None,
                 answer_limit: int = 0) -> None:
        self._scheduler = scheduler
        self._lease = lease
        self._upstream = upstream
        self._strip = strip
        self._on_answer = on_answer
        self._answer_limit = answer_limit
        super().__init__(self._events(first, lines), media_type="text/event-stream")

    async def _events(self, first: bytes, lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        edit = strip_event_logprobs if self._strip else _as_sent
        kept: list[tuple[float, bytes]] | None = [] if self._on_answer is not None else None
        size = 0
        try:
            line = first
            while True:
                if kept is not None:  # as the node sent it, for the audit
                    size += len(line)
                    kept = kept if size <= self._answer_limit else None
                    if kept is not None and line.startswith(b"data:"):
                        kept.append((time.monotonic(), line))
                yield edit(line) + b"\n\n"
                line = await anext(lines, b"")
                if not line:
                    break
        except _TRANSPORT_ERRORS:
            self._end(ok=False)
            yield _MID_STREAM_ERROR
            return
        self._end(ok=True)
        if kept is not None and self._on_answer is not None:
            self._on_answer(_stream_events(kept))

    def _end(self, *, ok: bool) -> None:
        self._upstream.close()  # no-op once the node's answer is complete
        self._scheduler.release(self._lease, ok=ok)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._end(ok=True)


def _as_sent(line: bytes) -> bytes:
    return line


def _stream_events(lines: list[tuple[float, bytes]]) -> list[tuple[float, Any]]:
    """A stream's ``data:`` lines (with their arrival times) as the payloads the canary check
    reads; ``[DONE]`` and lines that are not JSON left out."""
    out: list[tuple[float, Any]] = []
    for at, line in lines:
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        with contextlib.suppress(CodecError):
            out.append((at, load_json(payload, max_bytes=None)))
    return out


class _Attempts:
    """The nodes one request has tried, and why the last one failed."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.last = "every node serving it is busy or failing"

    def exhausted(self, model: str) -> ApiError:
        detail = f"{len(self.tried)} node(s) tried, last: {self.last}" if self.tried else self.last
        return no_node(model, detail)


async def _event_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The non-empty lines of a node's event stream, without their ends (``\\n``, ``\\r\\n``
    or ``\\r``); NodeAnswerTooLarge for a line over ``MAX_EVENT_LINE_BYTES``. Each byte is
    split once, however the node cuts its stream into chunks."""
    pending = bytearray()
    async for chunk in content.iter_any():
        pending += chunk
        if b"\n" not in chunk and b"\r" not in chunk:
            if len(pending) > MAX_EVENT_LINE_BYTES:
                raise NodeAnswerTooLarge(f"node sent an event line over {MAX_EVENT_LINE_BYTES} "
                                         "bytes")
            continue
        lines = bytes(pending).splitlines(keepends=True)
        tail = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
        pending = bytearray(tail)
        for line in lines:
            line = line.rstrip(b"\r\n")
            if line:
                yield line
        if len(pending) > MAX_EVENT_LINE_BYTES:
            raise NodeAnswerTooLarge(f"node sent an event line over {MAX_EVENT_LINE_BYTES} bytes")
    if pending:
        yield bytes(pending)


def _failure(exc: BaseException) -> str:
    """Why an attempt on a node failed, for the 503 answer when every attempt did."""
    if isinstance(exc, TimeoutError):
        return "node timed out"
    if isinstance(exc, NodeAnswerTooLarge):
        return str(exc)
    return f"node failed: {type(exc).__name__}"


def _interactive(request: Request, *, default: bool) -> bool:
    value = request.headers.get("x-dnanet-interactive")
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes")


def _node_error(status: int, content: bytes) -> ApiError:
    """A node's 4xx answer (the request's fault) passed on in OpenAI's format."""
    try:
        error = load_json(content, max_bytes=None)["error"]
        return ApiError(status, str(error.get("message", "bad request")),
                        param=error.get("param"), code=error.get("code"))
    except (CodecError, ValueError, KeyError, TypeError, AttributeError):
        return ApiError(status, "the node refused the request")


def open_gateway_session(timeout_s: float) -> aiohttp.ClientSession:
    """The gateway's client to the nodes (call inside the serving loop): keep-alive
    connections, up to 512 in all and any number per node (the scheduler bounds each node's
    requests in flight), idle ones dropped after 4 s, before uvicorn's 5 s on the node side
    could close one as a request goes out on it; every read of an answer is bounded by
    ``timeout_s``, the whole answer is not (a long stream runs to its end). No cookies: one
    node's cookies are not sent to the next."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=4.0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar())


def create_gateway_app(gateway: Gateway) -> FastAPI:
    """A stand-alone app serving only the gateway (benchmarks, tests)."""
    app = create_app("dnanet gateway")
    gateway.mount(app)
    return app


def generate_api_key(entropy: bytes) -> str:
    return "dn-" + entropy.hex()


def parse_api_keys(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip() for v in values if v.strip())


__all__ = [
    "CallbackDirectory", "Gateway", "GatewayConfig", "NodeDirectory", "StaticDirectory",
    "create_gateway_app", "generate_api_key", "parse_api_keys",
]
