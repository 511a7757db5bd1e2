from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.schema import MessageError, PurchaseMessage, purchase_id_for
from services.tokens import TokenError, issue_token, verify_token

SECRET = "s3cret"


def test_token_round_trip() -> None:
    token = issue_token(SECRET, "alice", 60)
    assert verify_token(SECRET, token) == "alice"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "0",
        lambda t: t.replace(".", "", 1),
        lambda t: "x" + t,
        lambda t: issue_token("other-secret", "alice", 60),
        lambda t: "",
        lambda t: "a.b.c",
    ],
)
def test_forged_or_malformed_tokens_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenError):
        verify_token(SECRET, mangle(issue_token(SECRET, "alice", 60)))


def test_expired_token_is_refused() -> None:
    token = issue_token(SECRET, "alice", 10, now_s=1000)
    assert verify_token(SECRET, token, now_s=1005) == "alice"
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, now_s=1011)


def test_signed_user_cannot_be_swapped() -> None:
    alice = issue_token(SECRET, "alice", 60)
    bob = issue_token(SECRET, "bob", 60)
    forged = bob.split(".")[0] + "." + ".".join(alice.split(".")[1:])
    with pytest.raises(TokenError):
        verify_token(SECRET, forged)


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_purchase_id_is_a_function_of_user_and_key(user: str, key: str) -> None:
    assert purchase_id_for(SECRET, user, key) == purchase_id_for(SECRET, user, key)
    assert purchase_id_for(SECRET, user, key) != purchase_id_for(SECRET, user + "x", key)
    assert purchase_id_for(SECRET, user, key) != purchase_id_for("other", user, key)


def test_user_key_boundary_is_unambiguous() -> None:
    assert purchase_id_for(SECRET, "ab", "c") != purchase_id_for(SECRET, "a", "bc")


def test_message_round_trip_and_garbage() -> None:
    message = PurchaseMessage("p_1", "u", "k", "sku", 2, 3, 123)
    assert PurchaseMessage.decode(message.encode()) == message
    for garbage in (b"", b"{}", b"[1]", b"\xff", b'{"purchase_id": 1}'):
        with pytest.raises(MessageError):
            PurchaseMessage.decode(garbage)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + "\u00e9",  # a non-ASCII character in the signature
        lambda t: t[:-1] + "\udcff",  # a header byte that is not UTF-8, as aiohttp decodes it
        lambda t: "\u00e9" + t,  # and in the signed part
        lambda t: "\udcff" + t,
    ],
)
def test_non_ascii_tokens_are_refused_not_crashed(mangle) -> None:  # type: ignore[no-untyped-def]
    # compare_digest raises TypeError on non-ASCII str: it must be a TokenError (401).
    with pytest.raises(TokenError):
        verify_token(SECRET, mangle(issue_token(SECRET, "alice", 60)))


token_parts = st.text(max_size=30).filter(lambda part: "." not in part)


@given(st.lists(token_parts, min_size=1, max_size=4).map(".".join))
def test_any_token_text_is_refused_with_a_token_error(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token)
