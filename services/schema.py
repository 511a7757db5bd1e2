"""The purchase message that travels on the Kafka topic, and the purchase id."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import orjson

from services.errors import FlashsaleError

PURCHASE_ID_BYTES = 16
# What a record on the purchases topic asks for: a new purchase, or to cancel or
# pay one (the item's partition owner decides both, in log order).
PURCHASE = "purchase"
CANCEL = "cancel"
PAY = "pay"
# A fence (docs/faults.md, "Redis lost data"): asks nothing of a purchase; the
# partition's owner records, in its batch transaction, that the log passed it.
FENCE = "fence"
KINDS = (PURCHASE, CANCEL, PAY, FENCE)
FENCE_ID_PREFIX = "fence-"
# Cancel and pay messages take no units from a shard: they have no reservation record.
NO_SHARD = -1


class MessageError(FlashsaleError):
    """A message on the topic could not be decoded."""


def purchase_id_for(secret: str, user_id: str, idempotency_key: str) -> str:
    """A keyed hash of (user, key): every retry, after any crash, names the same purchase."""
    material = f"{len(user_id)}:{user_id}|{idempotency_key}".encode()
    digest = hmac.new(secret.encode(), material, hashlib.sha256).digest()
    return "p_" + digest[:PURCHASE_ID_BYTES].hex()


@dataclass(frozen=True, slots=True)
class PurchaseMessage:
    purchase_id: str
    user_id: str
    idempotency_key: str
    item_id: str
    quantity: int
    # Which stock shard gave the unit(s), so a rejection returns them to the same place.
    shard: int
    admitted_at_ms: int
    kind: str = PURCHASE

    @classmethod
    def cancel(
        cls, purchase_id: str, user_id: str, item_id: str, quantity: int, at_ms: int
    ) -> PurchaseMessage:
        """Asks the item's partition owner to cancel a purchase: keyed by item id like
        the purchases, so it is decided in log order with them."""
        return cls(purchase_id, user_id, "", item_id, quantity, NO_SHARD, at_ms, CANCEL)

    @classmethod
    def pay(
        cls, purchase_id: str, user_id: str, item_id: str, quantity: int, at_ms: int
    ) -> PurchaseMessage:
        """Asks the item's partition owner to mark a purchase on hold paid: the same
        single writer decides its expiry, so paid and expired never both happen."""
        return cls(purchase_id, user_id, "", item_id, quantity, NO_SHARD, at_ms, PAY)

    @classmethod
    def fence(cls, token: str, at_ms: int) -> PurchaseMessage:
        """A fence named `token`, produced to one partition: every record acknowledged
        before it was produced lies before it in that partition's log."""
        return cls(FENCE_ID_PREFIX + token, "", token, "", 0, NO_SHARD, at_ms, FENCE)

    @property
    def is_cancel(self) -> bool:
        return self.kind == CANCEL

    def encode(self) -> bytes:
        # A literal dict: dataclasses.asdict was a visible share of the admission path.
        fields: dict[str, object] = {
            "purchase_id": self.purchase_id,
            "user_id": self.user_id,
            "idempotency_key": self.idempotency_key,
            "item_id": self.item_id,
            "quantity": self.quantity,
            "shard": self.shard,
            "admitted_at_ms": self.admitted_at_ms,
        }
        # Purchases keep the bytes they always had; messages without "kind" are purchases.
        if self.kind != PURCHASE:
            fields["kind"] = self.kind
        return orjson.dumps(fields)

    @classmethod
    def decode(cls, raw: bytes) -> PurchaseMessage:
        try:
            data = orjson.loads(raw)
            kind = str(data.get("kind", PURCHASE))
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}")
            return cls(
                purchase_id=str(data["purchase_id"]),
                user_id=str(data["user_id"]),
                idempotency_key=str(data["idempotency_key"]),
                item_id=str(data["item_id"]),
                quantity=int(data["quantity"]),
                shard=int(data["shard"]),
                admitted_at_ms=int(data["admitted_at_ms"]),
                kind=kind,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MessageError(f"undecodable purchase message: {raw[:200]!r}") from exc
