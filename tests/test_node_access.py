"""Who a node's AI endpoints serve: a current mixer's signed request (through the gateway as it
forwards) or the operator's API key; everyone else gets a 401 naming what is missing or wrong.
Also the credential's EIP-712 struct, the mixer's signer and its head cache, and the key file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from eth_account.messages import encode_typed_data

from dnanet.ai.backends import TRIVIAL_EMBED_MODEL, BackendSet, TrivialBackend
from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import CodecError, ConfigError, ScheduleError
from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory, create_gateway_app
from dnanet.mixer.node_client import ChainHead, NodeCredentials
from dnanet.node.access import API_KEY_FILE, AiAccess, load_node_api_key
from dnanet.node.ai_api import mount_ai_api
from dnanet.protocol.access import (
    CREDENTIAL_HEADER,
    NodeCredential,
    NodeRequest,
    compute_body_digest,
    compute_node_request,
    recover_node_request_signer,
    sign_node_request,
    verify_credential_block,
)
from dnanet.service.http import Server, create_app
from dnanet.service.network import NodeRecord
from protocol_fixtures import DOMAIN, make_mixers, seeded_identity

MIXER = make_mixers(1, "access-mixer")[0].identity
STRANGER = seeded_identity("access/stranger")
ENDPOINT = "http://node.test:8701"
HEAD = 10_000
WINDOW = 64
BODY = json.dumps({"model": TRIVIAL_EMBED_MODEL, "input": ["hello"]}).encode()
KEY = "operator-key-1"


def access(*, api_key: str | None = None, endpoint: str = ENDPOINT,
           head: int | None = HEAD) -> AiAccess:
    return AiAccess(domain=DOMAIN, mixers=lambda: {MIXER.address: b""}, head=lambda: head,
                    endpoint=lambda: endpoint, window_blocks=WINDOW, api_key=api_key)


def credential(signer: Identity = MIXER, *, url: str = ENDPOINT + "/v1/embeddings",
               body: bytes = BODY, block: int = HEAD, nonce: bytes = b"\x01" * 16) -> str:
    request = compute_node_request("POST", url, body, block, nonce)
    return sign_node_request(signer, DOMAIN, request).encode()


@contextlib.asynccontextmanager
async def node_client(guard: AiAccess | None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app("node")
    backends = BackendSet([TrivialBackend()])
    await backends.load()
    mount_ai_api(app, backends, guard)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ENDPOINT) as client:
        yield client


def post(guard: AiAccess, *headers: dict[str, str], body: bytes = BODY,
         path: str = "/v1/embeddings") -> list[httpx.Response]:
    """Each of ``headers`` in turn, on one node."""
    async def go() -> list[httpx.Response]:
        async with node_client(guard) as client:
            return [await client.post(path, content=body, headers=h) for h in headers]

    return asyncio.run(go())


def refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_credential"
    for word in words:
        assert word in error["message"], error["message"]


# -- the node's endpoints ----------------------------------------------------------------------


def test_a_request_without_credentials_is_refused_and_one_with_them_served() -> None:
    guard = access(api_key=KEY)
    bare, keyed, signed = post(guard, {}, {"authorization": f"Bearer {KEY}"},
                               {CREDENTIAL_HEADER: credential()})
    refused(bare, CREDENTIAL_HEADER, "API key")
    assert keyed.status_code == 200 and keyed.json()["data"]
    assert signed.status_code == 200 and signed.json()["data"]


def test_the_model_list_stays_open() -> None:
    async def go() -> httpx.Response:
        async with node_client(access()) as client:
            return await client.get("/v1/models")

    assert asyncio.run(go()).status_code == 200


def test_each_bad_credential_is_refused_naming_why() -> None:
    cases: list[tuple[dict[str, str], tuple[str, ...]]] = [
        ({"authorization": "Bearer wrong-key"}, (CREDENTIAL_HEADER,)),
        ({CREDENTIAL_HEADER: "12.ab"}, ("expected <block>",)),
        ({CREDENTIAL_HEADER: credential(STRANGER)}, ("not a current mixer",)),
        ({CREDENTIAL_HEADER: credential(url="http://other-node:8701/v1/embeddings")},
         ("not a current mixer",)),  # signed for another node: recovers another address
        ({CREDENTIAL_HEADER: credential(body=b"{}")}, ("not a current mixer",)),
        ({CREDENTIAL_HEADER: credential(url=ENDPOINT + "/v1/chat/completions")},
         ("not a current mixer",)),
        ({CREDENTIAL_HEADER: credential(block=HEAD - WINDOW - 1)}, ("window",)),
        ({CREDENTIAL_HEADER: credential(block=HEAD + WINDOW + 1)}, ("window",)),
    ]
    responses = post(access(api_key=KEY), *(headers for headers, _ in cases))
    for response, (_, words) in zip(responses, cases, strict=True):
        refused(response, *words)


def test_a_credential_works_once() -> None:
    header = {CREDENTIAL_HEADER: credential()}
    first, again = post(access(), header, header)
    assert first.status_code == 200
    refused(again, "used before")
    # A fresh nonce is a new request.
    (fresh,) = post(access(), {CREDENTIAL_HEADER: credential(nonce=b"\x02" * 16)})
    assert fresh.status_code == 200


def test_a_node_that_has_not_read_the_head_refuses_credentials() -> None:
    (response,) = post(access(head=None), {CREDENTIAL_HEADER: credential()})
    refused(response, "head")


def test_without_a_key_the_bearer_header_is_no_way_in() -> None:
    (response,) = post(access(), {"authorization": "Bearer "})
    refused(response, CREDENTIAL_HEADER)


# -- the gateway forwards with its mixer's credential ---------------------------------------------


@contextlib.asynccontextmanager
async def gateway_to_node(sign: bool) -> AsyncIterator[str]:
    holder: dict[str, str] = {}
    app = create_app("node")
    backends = BackendSet([TrivialBackend()])
    await backends.load()
    mount_ai_api(app, backends, AiAccess(
        domain=DOMAIN, mixers=lambda: {MIXER.address: b""}, head=lambda: HEAD,
        endpoint=lambda: holder["url"], window_blocks=WINDOW))
    node = Server(app, "127.0.0.1", 0)
    await node.start()
    holder["url"] = node.url
    config = GatewayConfig(
        seed=3, canary_rate=0.0, canary_interval_s=0,
        node_credential=NodeCredentials(MIXER, DOMAIN, lambda: HEAD) if sign else None)
    record = NodeRecord(address="0x" + "01" * 20, endpoint=node.url, hardware_class=0,
                        stake=1, jailed=False, active=True)
    gateway = Gateway(config, StaticDirectory([record]))
    front = Server(create_gateway_app(gateway), "127.0.0.1", 0)
    await front.start()
    try:
        yield front.url
    finally:
        await gateway.stop()
        await front.stop()
        await node.stop()


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
def test_the_gateway_reaches_a_node_only_with_its_mixers_credential(sign: bool) -> None:
    async def go() -> list[httpx.Response]:
        async with gateway_to_node(sign) as url, httpx.AsyncClient(timeout=30) as client:
            return [await client.post(url + "/v1/embeddings", content=BODY) for _ in range(3)]

    for response in asyncio.run(go()):
        if sign:
            assert response.status_code == 200, response.text
            assert len(response.json()["data"]) == 1
        else:
            assert response.status_code >= 500, response.text


# -- the struct, the header and the signer ---------------------------------------------------------


def test_the_request_struct_is_eip712_as_eth_account_hashes_it() -> None:
    request = compute_node_request("post", ENDPOINT + "/v1/embeddings", BODY, HEAD, bytes(16))
    assert request.method == "POST" and request.body_digest == compute_body_digest(BODY)
    struct = NodeRequest.struct_type()
    types = {"EIP712Domain": [{"name": "name", "type": "string"},
                              {"name": "version", "type": "string"},
                              {"name": "chainId", "type": "uint256"},
                              {"name": "verifyingContract", "type": "address"}],
             struct.name: [{"name": n, "type": t} for n, t in struct.fields]}
    encoded = encode_typed_data(full_message={
        "types": types, "primaryType": struct.name, "message": request.to_wire(),
        "domain": {"name": DOMAIN.name, "version": DOMAIN.version, "chainId": DOMAIN.chain_id,
                   "verifyingContract": DOMAIN.verifying_contract}})
    assert request.hash_struct() == encoded.body
    signed = sign_node_request(MIXER, DOMAIN, request)
    assert recover_typed(DOMAIN, request.hash_struct(), signed.signature) == MIXER.address
    assert recover_node_request_signer(DOMAIN, "POST", request.url, BODY,
                                       NodeCredential.parse(signed.encode())) == MIXER.address


@pytest.mark.parametrize("text", ["", "1.2", "x.00.00", "1." + "00" * 15 + "." + "00" * 65,
                                  "1." + "00" * 16 + "." + "00" * 64, "1.zz.00",
                                  str(1 << 64) + "." + "00" * 16 + "." + "00" * 65])
def test_a_malformed_header_is_a_codec_error_naming_it(text: str) -> None:
    with pytest.raises(CodecError) as exc:
        NodeCredential.parse(text)
    assert exc.value.field == CREDENTIAL_HEADER


def test_the_block_window() -> None:
    verify_credential_block(HEAD - WINDOW, HEAD, WINDOW)
    verify_credential_block(HEAD + WINDOW, HEAD, WINDOW)
    for block in (HEAD - WINDOW - 1, HEAD + WINDOW + 1):
        with pytest.raises(ScheduleError):
            verify_credential_block(block, HEAD, WINDOW)


def test_the_signer_uses_fresh_nonces_and_the_cached_head() -> None:
    reads: list[int] = []
    now = [0.0]

    def read() -> int:
        reads.append(len(reads))
        return 100 + len(reads)

    head = ChainHead(read, max_age_s=5.0, clock=lambda: now[0])
    sign = NodeCredentials(MIXER, DOMAIN, head)
    first = NodeCredential.parse(sign("POST", ENDPOINT, BODY)[CREDENTIAL_HEADER])
    second = NodeCredential.parse(sign("POST", ENDPOINT, BODY)[CREDENTIAL_HEADER])
    assert first.nonce != second.nonce and first.block == second.block == 101
    assert len(reads) == 1  # the head is read once while it is fresh
    now[0] = 6.0
    head()  # stale: read again in the background, the old value answers meanwhile
    for _ in range(400):  # the background read is a thread: wait for it, not for a time
        if head() == 102:
            break
        time.sleep(0.005)
    assert head() == 102 and len(reads) == 2


def test_a_head_too_old_to_sign_with_is_read_again_at_once() -> None:
    """After an idle spell (a gateway between bursts) the cached head is older than a node's
    window: the first request after it must not carry it (every node answered 401)."""
    chain = [100]
    now = [0.0]
    head = ChainHead(lambda: chain[0], max_age_s=5.0, clock=lambda: now[0])
    assert head() == 100
    now[0], chain[0] = 60.0, 1_300
    assert head() == 1_300  # read now, not in the background
    sign = NodeCredentials(MIXER, DOMAIN, head)
    credential = NodeCredential.parse(sign("POST", ENDPOINT, BODY)[CREDENTIAL_HEADER])
    verify_credential_block(credential.block, 1_301, WINDOW)


# -- the operator's key ------------------------------------------------------------------------------


@contextlib.contextmanager
def key_file(tmp_path: Path, text: str, mode: int) -> Iterator[Path]:
    path = tmp_path / API_KEY_FILE
    path.write_text(text)
    os.chmod(path, mode)
    yield path


def test_the_key_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    assert load_node_api_key({}, tmp_path) is None
    assert load_node_api_key({"DNANET_NODE_API_KEY": " env-key\n"}, tmp_path) == "env-key"
    with key_file(tmp_path, "file-key\n", 0o600):
        assert load_node_api_key({}, tmp_path) == "file-key"
        assert load_node_api_key({"DNANET_NODE_API_KEY": "env-key"}, tmp_path) == "env-key"


@pytest.mark.parametrize(("text", "mode", "env", "message"), [
    ("file-key", 0o644, {}, "chmod 600"),
    ("  \n", 0o600, {}, "is empty"),
    ("", 0o600, {"DNANET_NODE_API_KEY": ""}, "DNANET_NODE_API_KEY is empty"),
])
def test_a_readable_or_empty_key_is_refused(tmp_path: Path, text: str, mode: int,
                                            env: dict[str, str], message: str) -> None:
    with key_file(tmp_path, text, mode), pytest.raises(ConfigError, match=message):
        load_node_api_key(env, tmp_path)
