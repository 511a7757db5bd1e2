"""The checks on what a key's later requests were told (loadtests.chaos.checker): a retry
of an accepted key gets its purchase back, and a 503 reserved nothing.

Only retries of the same request are judged: api.md makes a key sent again with
another body (another item or quantity) a different request, which the gateway
refuses `422 idempotency_key_reused` (gateway/admission_rules.py
`check_same_request`). The chaos workload (loadtests/chaos/workload.py) sends every
retry of a key with the body of its first request. A request with no answer
(`NO_ANSWER`: connection cut, client timeout; or cut short by the run's end) is
not an answer and is not judged.
"""

from __future__ import annotations

from collections import defaultdict

from loadtests.chaos.checkrun import RunView, answered_s
from loadtests.chaos.history import PURCHASE, Op
from loadtests.chaos.pgsnapshot import PurchaseRow
from loadtests.sale.client import NO_ANSWER

# Statuses of a purchase that charged units or once held them.
CHARGED = frozenset({"confirmed", "paid", "cancelled", "expired"})


def _answered(op: Op) -> bool:
    return op.http_status not in (None, NO_ANSWER)


def _same_request(op: Op, item: str | None, quantity: int | None) -> bool:
    return (op.item, op.quantity) == (item, quantity)


def _posts(run: RunView, pair: tuple[str, str]) -> list[Op]:
    return [op for op in run.ops_by_key.get(pair, []) if op.kind == PURCHASE]


def check_retries(run: RunView) -> None:
    """api.md: "The same user sending the same Idempotency-Key again gets the same
    purchase_id ... whatever the timing, also after Redis lost its data and after
    the item sold out." Any other answer to a request of an accepted key, invoked
    after its 202 was answered, is RETRY_REFUSED (another id is SPLIT_KEY)."""
    judged = 0
    for pair, accepted in run.first_202.items():
        since = answered_s(accepted)
        retries = [
            op
            for op in _posts(run, pair)
            if op.invoke_s > since
            and _answered(op)
            and _same_request(op, accepted.item, accepted.quantity)
        ]
        judged += len(retries)
        refused = [op for op in retries if op.http_status != 202]
        if refused:
            answers = sorted({f"{op.http_status} {op.error or ''}".rstrip() for op in refused})
            run.violation(
                "RETRY_REFUSED",
                f"user {pair[0]} key {pair[1]}: accepted as {accepted.purchase_id},"
                f" then {len(refused)} retries answered {', '.join(answers)}",
                [run.op_line(accepted), *(run.op_line(op) for op in refused)],
            )
    run.report.counts["retries after a 202 checked"] = judged


def check_charged_after_503(run: RunView) -> None:
    """api.md, POST /v1/purchases: "503 unavailable when the queue cannot take it
    (nothing stays reserved)". A 503 whose purchase charged (or once held) units,
    with no 202 to a request of the key invoked after the 503 was answered, told
    its client a falsehood: CHARGED_AFTER_503. A 503 to a retry of a key already
    answered 202 is named once, by check_retries, not here."""
    rows: dict[tuple[str, str], list[PurchaseRow]] = defaultdict(list)
    for row in run.snapshot.purchases:
        rows[(row.user_id, row.idempotency_key)].append(row)
    judged = 0
    for pair, ops in run.ops_by_key.items():
        posts = [op for op in ops if op.kind == PURCHASE]
        accepted = run.first_202.get(pair)
        # A 503 to a request invoked after a 202 was answered is RETRY_REFUSED's.
        refusals = [
            op
            for op in posts
            if op.http_status == 503 and (accepted is None or op.invoke_s <= answered_s(accepted))
        ]
        if not refusals:
            continue
        # Any 503 with no later 202 means the last one has none either.
        last = max(refusals, key=answered_s)
        charged = [
            row
            for row in rows.get(pair, [])
            if row.status in CHARGED and _same_request(last, row.item_id, row.quantity)
        ]
        if not charged:
            continue
        judged += 1
        told = answered_s(last)
        if not any(op.http_status == 202 and op.invoke_s > told for op in posts):
            run.violation(
                "CHARGED_AFTER_503",
                f"user {pair[0]} key {pair[1]}: answered 503 (nothing stays reserved),"
                f" then {charged[0].status} with no later 202",
                [run.op_line(last), run.row_line(charged[0]), *run.ops_of(*pair)],
            )
    run.report.counts["keys answered 503 and later charged"] = judged
