"""The limiter kept in this process: the embedded default when no Redis is configured.

It runs a line-for-line Python port of ``lua/*.lua`` over the same keys and arguments, so both
implementations pass one contract test suite. Each operation runs without awaiting anything, so
on one event loop it is as atomic as a Lua script. Nothing is shared with other processes: with
it, a gateway must run a single worker.

Time to live follows the callers' ``now`` (the clock the windows use), not the wall clock.
"""

from __future__ import annotations

import heapq
import math

from gateway.budget.limiter import Arg, Limiter


class _Counter:
    __slots__ = ("expires", "reserved", "used")

    def __init__(self) -> None:
        self.used = 0
        self.reserved = 0
        self.expires = float("inf")


class _Team:
    """A team's reservations: the ``res`` hash and the ``exp`` sorted set of the Lua scripts."""

    __slots__ = ("due", "records", "scores")

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.scores: dict[str, float] = {}
        # (score, id); an entry whose score is no longer the id's current one is stale.
        self.due: list[tuple[float, str]] = []

    def set_score(self, request_id: str, score: float) -> None:
        self.scores[request_id] = score
        heapq.heappush(self.due, (score, request_id))
        if len(self.due) > 2 * len(self.scores) + 1024:
            # Settled ids leave stale entries behind until they come due; drop them in bulk.
            self.due = [(score, rid) for rid, score in self.scores.items()]
            heapq.heapify(self.due)

    def remove(self, request_id: str) -> None:
        self.records.pop(request_id, None)
        self.scores.pop(request_id, None)


class MemoryLimiter(Limiter):
    """Budgets and rate limits held in process memory (one gateway process only)."""

    backend = "memory"

    def __init__(
        self,
        prefix: str = "tollgate:",
        *,
        hold_margin_s: float = 30.0,
        late_settle_s: float = 3600.0,
        sweep_batch: int = 16,
        max_hold_s: float = 3600.0,
    ) -> None:
        super().__init__(
            prefix,
            hold_margin_s=hold_margin_s,
            late_settle_s=late_settle_s,
            sweep_batch=sweep_batch,
            max_hold_s=max_hold_s,
        )
        self._specs: dict[str, list[tuple[str, int]]] = {}
        self._now = float("-inf")  # the latest time an operation carried
        self._counters: dict[str, _Counter] = {}
        self._counter_due: list[tuple[float, str]] = []
        self._teams: dict[str, _Team] = {}

    # --- storage primitives, as Redis would do them ---------------------------------------

    def _get(self, key: str, now: float) -> _Counter | None:
        counter = self._counters.get(key)
        if counter is not None and counter.expires <= now:
            del self._counters[key]
            return None
        return counter

    def _purge(self, now: float, batch: int = 64) -> None:
        due = self._counter_due
        while due and due[0][0] <= now and batch > 0:
            batch -= 1
            expires, key = heapq.heappop(due)
            counter = self._counters.get(key)
            if counter is not None and counter.expires == expires:
                del self._counters[key]

    def _team(self, res: str) -> _Team:
        team = self._teams.get(res)
        if team is None:
            team = self._teams[res] = _Team()
        return team

    def _unreserve(self, key: str, amount: str, now: float) -> None:
        counter = self._get(key, now)
        if amount != "0" and counter is not None:
            counter.reserved = max(0, counter.reserved - int(amount))

    def _sweep(self, team: _Team, now: float, batch: int, grace: float) -> None:
        # team.due, not a local alias: set_score below may replace the list when compacting.
        while team.due and team.due[0][0] <= now and batch > 0:
            score, request_id = heapq.heappop(team.due)
            if team.scores.get(request_id) != score:
                continue  # stale entry: rescored or removed since
            batch -= 1
            record = team.records.get(request_id)
            if record is not None and record[0] == "a":
                for j in range(3, len(record), 3):
                    self._unreserve(record[j], _held(record, record[j + 1]), now)
                record[0] = "x"
                team.set_score(request_id, now + grace)
            else:
                team.remove(request_id)

    # --- the four scripts --------------------------------------------------------------------

    async def _admit(self, keys: list[str], args: list[Arg]) -> list[int]:
        now, expires = float(args[1]), float(args[2])
        request_id, tokens, nano, mode = str(args[0]), str(args[3]), str(args[4]), args[5]
        grace, live = float(args[7]), float(args[8])
        specs = self._parse_specs(str(args[9]))
        ends = [int(end) for end in str(args[10]).split()]
        self._now = max(self._now, now)
        self._purge(now)
        team = self._team(keys[0])
        self._sweep(team, now, int(args[6]), grace)

        status = 2 if mode == "r" and request_id in team.records else 1
        out = [0]
        amounts: list[str] = []
        for i, key in enumerate(keys[2:]):
            unit, limit = specs[i]
            if unit == "r":
                amount = "0" if mode == "f" else "1"
            else:
                amount = tokens if unit == "t" else nano
            amounts.append(amount)
            counter = self._get(key, now)
            used, reserved = (counter.used, counter.reserved) if counter else (0, 0)
            refused = 0
            need = int(amount)
            if mode != "f" and need > 0 and used + reserved + need > limit:
                refused = 1
                if status == 1:
                    status = 0
            out += (used, reserved, refused)
        out[0] = status
        if status != 1:
            return out

        record = ["a", tokens, nano]
        for i, key in enumerate(keys[2:]):
            unit, limit = specs[i]
            amount = amounts[i]
            if amount != "0":
                counter = self._get(key, now)
                if counter is None:
                    counter = self._counters[key] = _Counter()
                    counter.expires = now + math.ceil(ends[i] - now + live)
                    heapq.heappush(self._counter_due, (counter.expires, key))
                if mode == "r" and unit != "r":
                    counter.reserved += int(amount)
                    out[3 * i + 2] = counter.reserved
                else:
                    counter.used += int(amount)
                    out[3 * i + 1] = counter.used
            if unit != "r":
                record += (key, unit, str(limit))
        if mode == "r":
            team.records[request_id] = record
            team.set_score(request_id, expires)
        return out

    def _parse_specs(self, text: str) -> list[tuple[str, int]]:
        found = self._specs.get(text)
        if found is None:
            if len(self._specs) > 10_000:
                self._specs.clear()
            parts = text.split(",") if text else []
            found = self._specs[text] = [(part[0], int(part[1:])) for part in parts]
        return found

    async def _settle(self, keys: list[str], args: list[Arg]) -> int:
        team = self._teams.get(keys[0])
        request_id = str(args[0])
        record = team.records.get(request_id) if team else None
        if team is None or record is None:
            return 0
        # settle carries no time (the scripts need none): the latest time seen stands in for
        # the clock Redis expires keys by.
        now = self._now
        active = record[0] == "a"
        settle = args[3] == "s"
        for j in range(3, len(record), 3):
            key, unit = record[j], record[j + 1]
            reserved, used = (record[1], str(args[1])) if unit == "t" else (record[2], str(args[2]))
            if active:
                self._unreserve(key, reserved, now)
            counter = self._get(key, now)
            if settle and used != "0" and counter is not None:
                counter.used += int(used)
        team.remove(request_id)
        return 1 if active else 2

    async def _extend(self, keys: list[str], args: list[Arg]) -> int:
        team = self._team(keys[0])
        request_id, now = str(args[0]), float(args[3])
        grace = float(args[6])
        self._now = max(self._now, now)
        self._sweep(team, now, int(args[5]), grace)
        record = team.records.get(request_id)
        if record is None or record[0] != "a":
            return -1
        new = {"t": str(args[1]), "u": str(args[2])}
        delta = {"t": int(args[1]) - int(record[1]), "u": int(args[2]) - int(record[2])}
        for j in range(3, len(record), 3):
            key, unit, limit = record[j], record[j + 1], int(record[j + 2])
            grow = delta[unit]
            if grow > 0:
                counter = self._get(key, now)
                used, reserved = (counter.used, counter.reserved) if counter else (0, 0)
                if used + reserved + grow > limit:
                    return 0
        for j in range(3, len(record), 3):
            key, unit = record[j], record[j + 1]
            counter = self._get(key, now)
            if delta[unit] != 0 and counter is not None:
                counter.reserved = max(0, counter.reserved + delta[unit])
        record[1], record[2] = new["t"], new["u"]
        expires = float(args[4])
        if expires > 0 and expires > team.scores.get(request_id, 0.0):
            team.set_score(request_id, expires)
        return 1

    async def _read(self, keys: list[str], args: list[Arg]) -> list[int]:
        now = float(args[0])
        self._now = max(self._now, now)
        self._sweep(self._team(keys[0]), now, int(args[1]), float(args[2]))
        out: list[int] = []
        for key in keys[2:]:
            counter = self._get(key, now)
            out += (counter.used, counter.reserved) if counter else (0, 0)
        return out


def _held(record: list[str], unit: str) -> str:
    return record[1] if unit == "t" else record[2]
