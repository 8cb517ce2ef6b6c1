"""`WarmupStore` on the controls table, partition `warmup`:

- sk `<source>|<provider>|<date>`: `taken`, the recipients senders reserved of that
  day's cap. A reservation is one conditional ADD that only succeeds while the total
  stays within the cap, so however many senders take blocks at once, a warming source
  is given at most its cap (and, once every block is spent, exactly it);
- sk `<source>#outcomes#<date>`: `attempts`, `bounced`, `deferred` of that day, added
  by each sender as it goes (what the day's advance or hold is decided on);
- sk `<source>#state`: `day`, `as_of`, `why`: the warm-up day, moved by a conditional
  put so that one sender decides each date.

A source name never holds `#` or `|` (policy names are [A-Za-z0-9_.-]), so no item of
one source can be taken for another's. Count items expire (TTL) after a week.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from quiver.storage.base import StorageError
from quiver.storage.boto_calls import call, error_code, query_all
from quiver.storage.warmup import CapUse, DayCounts, DayState, Plan

PK: Final = "warmup"
# Kept a week: the status shows today, a decision reads yesterday; older days are
# the events' (every attempt is one) to tell.
KEEP_DAYS = 7
# A reserve that loses a race re-reads and tries again at most this often; each
# retry is because another sender took part of the cap meanwhile.
MAX_TRIES = 5
_FAILED = "ConditionalCheckFailedException"


def cap_key(source: str, provider: str, date: str) -> str:
    return f"{source}|{provider}|{date}"


def _expires(date: str) -> str:
    day = dt.date.fromisoformat(date) + dt.timedelta(days=KEEP_DAYS + 1)
    return str(int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()))


class DynamoWarmup:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def _key(self, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": PK}, "sk": {"S": sk}}

    async def reserve(self, *, source: str, provider: str, date: str, want: int,
                      plan: Plan) -> int:
        key = self._key(cap_key(source, provider, date))
        cap = plan.cap
        for _ in range(MAX_TRIES):
            if want <= 0:
                return 0
            try:
                await call(
                    self._client.update_item, TableName=self.table, Key=key,
                    UpdateExpression="ADD taken :n SET expires_at = :e, cap = :c, "
                                     "#d = :d, template = :t",
                    ConditionExpression="attribute_not_exists(taken) OR taken <= :room",
                    ExpressionAttributeNames={"#d": "day"},
                    ExpressionAttributeValues={":n": {"N": str(want)},
                                               ":room": {"N": str(cap - want)},
                                               ":e": {"N": _expires(date)},
                                               ":c": {"N": str(cap)},
                                               ":d": {"N": str(plan.day)},
                                               ":t": {"S": plan.template}})
                return want
            except StorageError as exc:
                if error_code(exc) != _FAILED:
                    raise
            # Less than `want` is left: take what is (another sender may take it first).
            item = await self._get(key)
            want = min(want, cap - int(item.get("taken", {}).get("N", "0")))
        return 0

    async def release(self, *, source: str, provider: str, date: str, count: int) -> None:
        if count <= 0:
            return
        await call(self._client.update_item, TableName=self.table,
                   Key=self._key(cap_key(source, provider, date)),
                   UpdateExpression="ADD taken :n", ConditionExpression="taken >= :c",
                   ExpressionAttributeValues={":n": {"N": str(-count)},
                                              ":c": {"N": str(count)}})

    async def used(self, *, source: str, date: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in await query_all(
                self._client, TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": {"S": PK}, ":prefix": {"S": f"{source}|"}}):
            _, provider, day = item["sk"]["S"].split("|", 2)
            if day == date:
                out[provider] = int(item.get("taken", {}).get("N", "0"))
        return out

    async def add_outcomes(self, *, source: str, date: str, counts: DayCounts) -> None:
        await call(self._client.update_item, TableName=self.table,
                   Key=self._key(f"{source}#outcomes#{date}"),
                   # DEFERRED is a reserved word of DynamoDB's expressions.
                   UpdateExpression="ADD attempts :a, bounced :b, #d :d SET expires_at = :e",
                   ExpressionAttributeNames={"#d": "deferred"},
                   ExpressionAttributeValues={
                       ":a": {"N": str(counts.attempts)}, ":b": {"N": str(counts.bounced)},
                       ":d": {"N": str(counts.deferred)}, ":e": {"N": _expires(date)}})

    async def outcomes(self, *, source: str, date: str) -> DayCounts:
        item = await self._get(self._key(f"{source}#outcomes#{date}"))

        def n(name: str) -> int:
            return int(item.get(name, {}).get("N", "0"))

        return DayCounts(attempts=n("attempts"), bounced=n("bounced"), deferred=n("deferred"))

    async def today(self, *, date: str) -> tuple[list[CapUse], dict[str, DayState]]:
        uses: list[CapUse] = []
        states: dict[str, DayState] = {}
        for item in await query_all(
                self._client, TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": PK}}):
            sk = item["sk"]["S"]
            if sk.endswith("#state"):
                state = _state(item)
                if state is not None:
                    states[sk.removesuffix("#state")] = state
            elif sk.count("|") == 2 and sk.endswith(f"|{date}"):
                source, provider, _ = sk.split("|")
                uses.append(CapUse(
                    source=source, provider=provider, date=date,
                    taken=_number(item, "taken"), cap=_number(item, "cap"),
                    day=_number(item, "day"), template=item.get("template", {}).get("S", "")))
        return uses, states

    async def state(self, *, source: str) -> DayState | None:
        item = await self._get(self._key(f"{source}#state"))
        if not item:
            return None
        state = _state(item)
        if state is None:
            raise StorageError(f"warm-up state of {source} is not readable: {item!r}")
        return state

    async def put_state(self, *, source: str, state: DayState,
                        expected: DayState | None) -> bool:
        item = {**self._key(f"{source}#state"), "day": {"N": str(state.day)},
                "as_of": {"S": state.as_of}, "why": {"S": state.why}}
        if expected is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(sk)"}
        else:
            condition = {"ConditionExpression": "#d = :d AND as_of = :a",
                         "ExpressionAttributeNames": {"#d": "day"},
                         "ExpressionAttributeValues": {":d": {"N": str(expected.day)},
                                                       ":a": {"S": expected.as_of}}}
        try:
            await call(self._client.put_item, TableName=self.table, Item=item, **condition)
        except StorageError as exc:
            if error_code(exc) == _FAILED:
                return False
            raise
        return True

    async def _get(self, key: dict[str, Any]) -> dict[str, Any]:
        response = await call(self._client.get_item, TableName=self.table, Key=key,
                              ConsistentRead=True)
        item: dict[str, Any] = response.get("Item", {})
        return item


def _number(item: dict[str, Any], name: str) -> int:
    return int(item.get(name, {}).get("N", "0"))


def _state(item: dict[str, Any]) -> DayState | None:
    try:
        return DayState(day=int(item["day"]["N"]), as_of=item["as_of"]["S"],
                        why=item.get("why", {}).get("S", ""))
    except (KeyError, ValueError):
        return None
