"""Every malformed or hostile request gets a clear 4xx with the JSON error body of
api.md and changes nothing (issue: bad input, abuse and security)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tokens import issue_token
from tests.conftest import fresh_id
from tests.integration.conftest import LiveStack
from tests.integration.rawhttp import RawResponse, chunks, raw_exchange, raw_request, request_head

JSON = ("Content-Type", "application/json")
PROJECT = Path(__file__).resolve().parents[2]

HOSTILE_USER = "mallory"


@pytest.fixture(scope="module")
def decoy(live: LiveStack) -> Iterator[str]:
    """An item with stock, so a request that slipped through would change it."""
    item_id = fresh_id("decoy")
    admin = ("Authorization", f"Bearer {live.settings.admin_token}")
    body = json.dumps({"stock": 5, "per_user_limit": 2}).encode()
    created = raw_request(
        live.settings.gateway_port, "PUT", f"/v1/items/{item_id}", [admin, JSON], body
    )
    assert created.status == 201
    yield item_id


def snapshot(live: LiveStack) -> tuple[object, ...]:
    """What a hostile request could change: every item's terms, and the sold
    count and purchases of the decoy and of the hostile user. Other items' sold
    counts are left out: purchases of earlier tests may still land meanwhile."""

    async def read() -> tuple[object, ...]:
        conn = await asyncpg.connect(live.settings.database_url)
        try:
            items = await conn.fetch(
                "SELECT item_id, stock, per_user_limit,"
                " CASE WHEN item_id LIKE 'decoy-%' THEN sold END FROM items ORDER BY item_id"
            )
            purchases = await conn.fetchval(
                "SELECT count(*) FROM purchases WHERE item_id LIKE 'decoy-%' OR user_id = $1",
                HOSTILE_USER,
            )
            return (*(tuple(row) for row in items), purchases)
        finally:
            await conn.close()

    return asyncio.run(read())


def user(live: LiveStack, name: str = HOSTILE_USER) -> tuple[str, str]:
    return ("Authorization", f"Bearer {issue_token(live.settings.secret, name, 3600)}")


def key(value: bytes | str = "k-1") -> tuple[str, bytes | str]:
    return ("Idempotency-Key", value)


def assert_error(response: RawResponse, status: int, code: str | None) -> None:
    assert response.status == status, response.body
    assert response.headers.get("content-type", "").startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str)
    if code is not None:
        assert body["error"] == code, body


def hostile_signature(live: LiveStack, tail: bytes | str) -> tuple[str, bytes]:
    """A real token whose signature ends in bytes no signature has."""
    token = issue_token(live.settings.secret, HOSTILE_USER, 3600).encode()
    return (
        "Authorization",
        b"Bearer " + token[:-2] + (tail if isinstance(tail, bytes) else tail.encode()),
    )


def purchase_cases(live: LiveStack, decoy: str) -> list[tuple[str, list, bytes, int, str]]:  # type: ignore[type-arg]
    u, k = user(live), key()
    good = json.dumps({"item_id": decoy}).encode()
    expired = (
        "Authorization",
        "Bearer " + issue_token(live.settings.secret, "old", 10, now_s=time.time() - 3600),
    )
    forged = ("Authorization", "Bearer " + issue_token("not-the-secret", "mallory", 3600))
    admin_as_user = ("Authorization", f"Bearer {live.settings.admin_token}")
    return [
        ("not json", [u, k, JSON], b"{nope", 400, "invalid_json"),
        ("not utf-8", [u, k, JSON], b'{"item_id": "\xff\xfe"}', 400, "invalid_json"),
        (
            "NaN",
            [u, k, JSON],
            f'{{"item_id": "{decoy}", "quantity": NaN}}'.encode(),
            400,
            "invalid_json",
        ),
        (
            "Infinity",
            [u, k, JSON],
            f'{{"item_id": "{decoy}", "quantity": Infinity}}'.encode(),
            400,
            "invalid_json",
        ),
        ("array", [u, k, JSON], b"[1, 2]", 422, "invalid_body"),
        ("string", [u, k, JSON], b'"buy"', 422, "invalid_body"),
        ("null", [u, k, JSON], b"null", 422, "invalid_body"),
        ("missing item", [u, k, JSON], b"{}", 422, "invalid_body"),
        (
            "unknown field",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "price": 0}).encode(),
            422,
            "invalid_body",
        ),
        ("item id number", [u, k, JSON], b'{"item_id": 7}', 422, "invalid_body"),
        ("item id chars", [u, k, JSON], b'{"item_id": "a/../b"}', 422, "invalid_body"),
        (
            "item id long",
            [u, k, JSON],
            json.dumps({"item_id": "a" * 65}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity bool",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": True}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity string",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": "1"}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity fraction",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": 1.5}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity zero",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": 0}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity negative",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": -1}).encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity huge",
            [u, k, JSON],
            f'{{"item_id": "{decoy}", "quantity": {10**40}}}'.encode(),
            422,
            "invalid_body",
        ),
        (
            "quantity over the per-user limit",
            [u, k, JSON],
            json.dumps({"item_id": decoy, "quantity": 3}).encode(),
            422,
            "quantity_above_limit",
        ),
        (
            "unknown item",
            [u, k, JSON],
            json.dumps({"item_id": "no-such-item"}).encode(),
            404,
            "item_not_found",
        ),
        ("text/plain", [u, k, ("Content-Type", "text/plain")], good, 415, "unsupported_media_type"),
        ("no content type", [u, k], good, 415, "unsupported_media_type"),
        (
            "form",
            [u, k, ("Content-Type", "application/x-www-form-urlencoded")],
            b"item_id=x",
            415,
            "unsupported_media_type",
        ),
        (
            "body too large",
            [u, k, JSON],
            b'{"item_id": "' + b"a" * 10_000 + b'"}',
            413,
            "body_too_large",
        ),
        ("no idempotency key", [u, JSON], good, 400, "missing_idempotency_key"),
        ("empty idempotency key", [u, key(""), JSON], good, 400, "invalid_idempotency_key"),
        ("long idempotency key", [u, key("k" * 65), JSON], good, 400, "invalid_idempotency_key"),
        ("tab in key", [u, key(b"k\tk"), JSON], good, 400, "invalid_idempotency_key"),
        # Bytes HTTP forbids are refused by the HTTP parser, before any handler: JSON too.
        ("DEL in key", [u, key(b"k\x7fk"), JSON], good, 400, "bad_request"),
        ("control char in key", [u, key(b"k\x01k"), JSON], good, 400, "bad_request"),
        ("deep nesting", [u, k, JSON], b"[" * 4000, 400, "invalid_json"),
        ("deep nesting with items", [u, k, JSON], b"[1," * 1300, 400, "invalid_json"),
        (
            "non-ascii key",
            [u, key("cl\u00e9".encode("latin-1")), JSON],
            good,
            400,
            "invalid_idempotency_key",
        ),
        (
            "two idempotency keys",
            [u, key("a"), key("b"), JSON],
            good,
            400,
            "invalid_idempotency_key",
        ),
        ("no token", [k, JSON], good, 401, "unauthorized"),
        (
            "basic auth",
            [("Authorization", "Basic bWFsbG9yeTp4"), k, JSON],
            good,
            401,
            "unauthorized",
        ),
        ("empty bearer", [("Authorization", "Bearer "), k, JSON], good, 401, "unauthorized"),
        ("garbage token", [("Authorization", "Bearer a.b.c"), k, JSON], good, 401, "invalid_token"),
        ("forged token", [forged, k, JSON], good, 401, "invalid_token"),
        ("expired token", [expired, k, JSON], good, 401, "invalid_token"),
        ("admin token as user", [admin_as_user, k, JSON], good, 401, "invalid_token"),
        (
            "non-ascii signature",
            [hostile_signature(live, "é"), k, JSON],
            good,
            401,
            "invalid_token",
        ),
        ("non-utf-8 signature", [hostile_signature(live, b"\xff"), k, JSON], good, 401, None),
    ]


def test_hostile_purchases_get_a_clear_4xx_and_change_nothing(live: LiveStack, decoy: str) -> None:
    for name, headers, body, status, code in purchase_cases(live, decoy):
        before = snapshot(live)
        response = raw_request(live.settings.gateway_port, "POST", "/v1/purchases", headers, body)
        try:
            assert_error(response, status, code)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc
        assert snapshot(live) == before, name


def test_hostile_admin_requests_change_nothing(live: LiveStack, decoy: str) -> None:
    port = live.settings.gateway_port
    admin = ("Authorization", f"Bearer {live.settings.admin_token}")
    path = f"/v1/items/{decoy}"
    cases = [
        ("user token", [user(live), JSON], b'{"stock": 1}', 403, "forbidden"),
        ("no token", [JSON], b'{"stock": 1}', 401, "unauthorized"),
        (
            "wrong admin token",
            [("Authorization", "Bearer guess"), JSON],
            b'{"stock": 1}',
            401,
            "invalid_token",
        ),
        ("negative stock", [admin, JSON], b'{"stock": -1}', 422, "invalid_body"),
        ("stock string", [admin, JSON], b'{"stock": "5"}', 422, "invalid_body"),
        ("stock bool", [admin, JSON], b'{"stock": true}', 422, "invalid_body"),
        ("stock huge", [admin, JSON], b'{"stock": 1e300}', 422, "invalid_body"),
        ("limit zero", [admin, JSON], b'{"stock": 5, "per_user_limit": 0}', 422, "invalid_body"),
        ("unknown field", [admin, JSON], b'{"stock": 5, "sold": 0}', 422, "invalid_body"),
        ("no stock", [admin, JSON], b'{"per_user_limit": 1}', 422, "invalid_body"),
        ("not json", [admin, JSON], b"stock=5", 400, "invalid_json"),
        ("deep nesting", [admin, JSON], b"[" * 4000, 400, "invalid_json"),
        (
            "non-ascii token",
            [("Authorization", "Bearer é.é.é".encode()), JSON],
            b'{"stock": 1}',
            401,
            "invalid_token",
        ),
        ("non-utf-8 token", [("Authorization", b"Bearer \xff"), JSON], b'{"stock": 1}', 401, None),
        ("non-ascii signature", [hostile_signature(live, "é"), JSON], b'{"stock": 1}', 401, None),
    ]
    for name, headers, body, status, code in cases:
        before = snapshot(live)
        response = raw_request(port, "PUT", path, headers, body)
        assert_error(response, status, code)
        assert snapshot(live) == before, name
    bad_ids = ["a" * 65, "a%2Fb", "%20", "a%00b", "caf%C3%A9"]
    for bad_id in bad_ids:
        response = raw_request(port, "PUT", f"/v1/items/{bad_id}", [admin, JSON], b'{"stock": 1}')
        assert_error(response, 400, "invalid_item_id")


def test_bad_result_queries(live: LiveStack, decoy: str) -> None:
    port = live.settings.gateway_port
    u = user(live)
    pid = "p_" + "0" * 32
    for wait in ["abc", "-1", "31", "nan", "inf", "1e400", ""]:
        response = raw_request(port, "GET", f"/v1/purchases/{pid}?wait={wait}", [u])
        assert_error(response, 400, "invalid_wait")
    for path in [f"/v1/purchases/{pid}", "/v1/purchases/nope", "/v1/purchases/" + "p" * 300]:
        assert_error(raw_request(port, "GET", path, [u]), 404, "purchase_not_found")
    assert_error(raw_request(port, "GET", f"/v1/purchases/{pid}"), 401, "unauthorized")


def test_unknown_routes_and_methods(live: LiveStack) -> None:
    port = live.settings.gateway_port
    assert_error(raw_request(port, "GET", "/admin"), 404, "not_found")
    assert_error(raw_request(port, "PATCH", "/v1/purchases"), 405, "method_not_allowed")
    assert_error(raw_request(port, "DELETE", "/v1/items/x"), 405, "method_not_allowed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values)
def test_any_json_body_gets_a_clear_answer(live: LiveStack, body: object) -> None:
    if isinstance(body, dict) and isinstance(body.get("item_id"), str):
        body["item_id"] = "no-such-item-" + body["item_id"][:5]  # never a real purchase
    response = raw_request(
        live.settings.gateway_port,
        "POST",
        "/v1/purchases",
        [user(live, "fuzzer"), key("fuzz"), JSON],
        json.dumps(body).encode(),
    )
    assert 400 <= response.status < 500
    assert set(response.json()) >= {"error", "detail"}


# Deeper than json can parse, within the size limit: must be 400 invalid_json, not 500.
nested_bodies = st.integers(min_value=1, max_value=4000).flatmap(
    lambda depth: st.sampled_from([b"[" * depth, b"[1," * (depth // 3), b'[{"a":' * (depth // 6)])
)


def header_value(raw: bytes) -> bytes:
    """Any bytes but the line breaks that would end the header (the parser answers the rest)."""
    return bytes(b for b in raw if b not in b"\r\n")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200) | nested_bodies, idem=st.binary(max_size=80))
def test_any_bytes_and_any_key_get_a_clear_answer(live: LiveStack, raw: bytes, idem: bytes) -> None:
    idem = header_value(idem)
    response = raw_request(
        live.settings.gateway_port,
        "POST",
        "/v1/purchases",
        [user(live, "fuzzer"), key(idem), JSON],
        raw,
    )
    assert 400 <= response.status < 500, response.body
    assert set(response.json()) >= {"error", "detail"}


SIGNED = b"<signed-part>"
# Only bytes HTTP allows in a header value, so every request reaches the token check.
header_bytes = st.binary(max_size=60).map(
    lambda raw: bytes(b for b in raw if b == 0x09 or (b >= 0x20 and b != 0x7F))
)
# Token shapes: anything; three dot-separated parts of anything; a real signed part
# with a hostile signature (non-ASCII bytes made compare_digest raise: a 500).
token_shapes = (
    header_bytes
    | st.tuples(header_bytes, header_bytes, header_bytes).map(b".".join)
    | header_bytes.map(lambda signature: SIGNED + b"." + signature)
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=token_shapes)
def test_any_token_gets_a_401(live: LiveStack, token: bytes) -> None:
    signed = issue_token(live.settings.secret, "fuzzer", 3600).rsplit(".", 1)[0].encode()
    auth = ("Authorization", b"Bearer " + token.replace(SIGNED, signed))
    good = json.dumps({"item_id": "no-such-item"}).encode()
    port = live.settings.gateway_port
    purchase = raw_request(port, "POST", "/v1/purchases", [auth, key("fuzz"), JSON], good)
    assert_error(purchase, 401, None)
    admin = raw_request(port, "PUT", "/v1/items/fuzz-item", [auth, JSON], b'{"stock": 1}')
    assert_error(admin, 401, None)


def admin_header(live: LiveStack) -> tuple[str, str]:
    return ("Authorization", f"Bearer {live.settings.admin_token}")


def test_a_body_in_several_tcp_segments_is_read_whole(live: LiveStack) -> None:
    """A client that writes headers, then the body in parts (a valid body was a 400)."""
    item_id = fresh_id("split")
    body = json.dumps({"stock": 3, "per_user_limit": 1}).encode()
    head = request_head(
        "PUT",
        f"/v1/items/{item_id}",
        [admin_header(live), JSON, ("Content-Length", str(len(body)))],
    )
    response = raw_exchange(live.settings.gateway_port, [head, body[:6], body[6:]], pause_s=0.2)
    assert response.status == 201, response.body
    assert response.json()["stock"] == 3


def test_a_chunked_body_is_read_whole(live: LiveStack) -> None:
    item_id = fresh_id("chunked")
    body = json.dumps({"stock": 4}).encode()
    head = request_head(
        "PUT", f"/v1/items/{item_id}", [admin_header(live), JSON, ("Transfer-Encoding", "chunked")]
    )
    response = raw_exchange(
        live.settings.gateway_port, [head, *chunks(body[:4], body[4:])], pause_s=0.2
    )
    assert response.status == 201, response.body
    assert response.json()["stock"] == 4


def test_a_chunked_body_over_the_limit_is_413(live: LiveStack, decoy: str) -> None:
    before = snapshot(live)
    limit = live.settings.max_body_bytes
    padding = b" " * (limit // 2 + 1)  # each chunk fits; both together do not
    head = request_head(
        "PUT", f"/v1/items/{decoy}", [admin_header(live), JSON, ("Transfer-Encoding", "chunked")]
    )
    response = raw_exchange(
        live.settings.gateway_port, [head + b"".join(chunks(b'{"stock": 1}', padding, padding))]
    )
    assert_error(response, 413, "body_too_large")
    assert snapshot(live) == before


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("control char in a header", b"POST /v1/purchases HTTP/1.1\r\nIdempotency-Key: a\x01b\r\n"),
        ("malformed content-length", b"POST /v1/purchases HTTP/1.1\r\nContent-Length: 1x\r\n"),
        (
            "two content-lengths",
            b"POST /v1/purchases HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
        ),
        ("bad request line", b"GET /v1 HTTP/9\r\n"),
        ("header without a colon", b"GET /healthz HTTP/1.1\r\nno colon here\r\n"),
    ],
)
def test_protocol_errors_answer_the_json_error_body(
    live: LiveStack, name: str, head: bytes
) -> None:
    """The HTTP parser's own 400s (before any handler) have api.md's JSON body too."""
    request = head + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
    response = raw_exchange(live.settings.gateway_port, [request])
    assert_error(response, 400, "bad_request")


def test_schemathesis_finds_no_server_error_nor_schema_violation(live: LiveStack) -> None:
    url = f"http://127.0.0.1:{live.settings.gateway_port}/openapi.json"
    user_token = issue_token(live.settings.secret, "schemathesis", 3600)
    for token in (user_token, live.settings.admin_token):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(PROJECT / "schemathesis.toml"),
                "run",
                url,
                "--checks",
                "all",
                "-H",
                f"Authorization: Bearer {token}",
                "-n",
                "25",
                "--generation-deterministic",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=PROJECT,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_secrets_never_reach_logs(live: LiveStack, decoy: str) -> None:
    logs = live.settings.state_dir / "logs"
    text = "".join(path.read_text(errors="replace") for path in logs.glob("*.log"))
    assert text, "no logs were written"
    assert live.settings.admin_token not in text
    assert live.settings.secret not in text
