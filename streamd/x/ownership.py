"""Connection ownership (README "Connection ownership"): streamd knows which of the app's
streaming connections is its own, never sits out a stale slot it left itself, names who
holds the slot on TooManyConnections, and evicts per `x.evict`.

The stream reader calls the `SlotKeeper` at four points:

* `before_first_connect`: the connection the previous run recorded is still active (a
  crash, a SIGKILL, a lost node: X keeps such a zombie for a while) -> terminate it
  (`connections.terminated` why=own_stale) before connecting, so the restart is not refused.
* `learn(connected_at)`, beside the reading of each new connection: list the active
  connections on the endpoint; the one whose `connected_at` lies within LEARN_TOLERANCE_S
  of ours is ours. Ambiguous or none: nothing is recorded (`connections.own_unknown` says
  why). The id and the connect time are persisted (the spool's database) at once.
* `after_end`, after an established connection ended: ours still active (we stalled or
  closed and X may still count it) -> terminate it (own_stale); ours terminated through the
  API by someone else -> the reason becomes `evicted`, and this instance evicts nobody for
  `x.evict_min_interval` (no ping-pong).
* on TooManyConnections (`after_end` too): list the holders (`connections.holder` each),
  then per `x.evict`: "own" terminates the holders recorded as ours (own_stale), "endpoint"
  every holder on the endpoint (evict; at most once per `x.evict_min_interval`, and never
  right after being evicted ourselves), "never" nothing. If something was terminated, the
  policy reconnects after a short fixed delay instead of the 60 s ladder.

Where the API is not available (403: the tier; 404: absent), one `connections.unavailable`
line is logged and the keeper stays out of the way for the rest of the run. Any other
failure of the API is logged (`connections.failed`) and the disconnect is handled as if the
API did not exist. Nothing here ever raises into the reader but cancellation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import anyio
import orjson

from streamd.config import XSettings
from streamd.errors import (
    ConnectionsApiError,
    ConnectionsUnavailable,
    CredentialsError,
    StreamdError,
)
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.reasons import Reason
from streamd.records import rfc3339_ms
from streamd.x.classify import Classification
from streamd.x.connections import FILTERED_STREAM, ConnectionsApi, XConnection, own_candidates

__all__ = [
    "LEARN_TOLERANCE_S",
    "OWN_CONNECTION_KEY",
    "OwnRecord",
    "OwnRecordStore",
    "SlotKeeper",
]

# How far X's `connected_at` of our connection may lie from the time we saw the 200: the
# request's round trip plus the clock difference between this host and X (NTP keeps it
# well under a second). Two connects of the app within this window are ambiguous.
LEARN_TOLERANCE_S = 5.0
# One keeper operation (a listing, a termination) never holds up a reconnect longer.
OPERATION_TIMEOUT_S = 20.0
# After an established connection ends, its history entry is on the first page or two.
HISTORY_PAGES = 3
# The spool's meta key of the OwnRecord (JSON).
OWN_CONNECTION_KEY = "x.own_connection"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OwnRecord:
    """What survives a restart: our last connection, and the eviction times that keep this
    instance from ping-pong. Epoch seconds."""

    id: str | None = None
    connected_at: float | None = None
    evicted_at: float | None = None  # another client terminated ours
    evicted_others_at: float | None = None  # we last terminated another client's

    def to_text(self) -> str:
        return orjson.dumps({
            "id": self.id, "connected_at": self.connected_at,
            "evicted_at": self.evicted_at, "evicted_others_at": self.evicted_others_at,
        }).decode()

    @classmethod
    def from_text(cls, text: str | None) -> OwnRecord:
        """Tolerant: a record that is not what to_text wrote reads as no record."""
        if not text:
            return cls()
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            return cls()
        if not isinstance(obj, dict):
            return cls()

        def number(name: str) -> float | None:
            value = obj.get(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                return None
            return float(value) if math.isfinite(value) else None

        raw_id = obj.get("id")
        own_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
        return cls(own_id, number("connected_at"), number("evicted_at"),
                   number("evicted_others_at"))


class OwnRecordStore(Protocol):
    """Where the OwnRecord is kept (the daemon: the spool's meta table)."""

    async def load(self) -> str | None: ...
    async def save(self, text: str) -> None: ...


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339_ms(int(epoch * 1000))


class SlotKeeper:
    def __init__(
        self,
        settings: XSettings,
        api: Callable[[], AbstractAsyncContextManager[ConnectionsApi]],
        log: Logger,
        metrics: Metrics,
        *,
        store: OwnRecordStore | None = None,
        clock: Callable[[], float] = time.time,
        endpoint: str = FILTERED_STREAM,
        on_own: Callable[[str, float], Awaitable[None]] | None = None,
    ) -> None:
        """`api` opens a ConnectionsApi for one operation (and closes its client).
        `on_own(id, connected_at)` is awaited each time the id of our connection is learnt
        (high availability: the leader records it for its successor, streamd/ha)."""
        self._settings = settings
        self._api = api
        self._log = log
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._endpoint = endpoint
        self._on_own = on_own
        self.available = settings.connections_api
        self.record = OwnRecord()
        # Every id known to be ours (this run's and the recorded one of the previous run),
        # and those we terminated ourselves (their end is not an eviction).
        self._own_ids: set[str] = set()
        self._terminated_by_us: set[str] = set()

    # --- the reader's calls ------------------------------------------------------------

    async def load(self) -> None:
        if self._store is not None:
            self.record = OwnRecord.from_text(await self._store.load())
        if self.record.id is not None:
            self._own_ids.add(self.record.id)

    async def before_first_connect(self) -> None:
        """Terminate the connection a previous run left active, if any."""
        if not self.available or (self.record.id is None and self.record.connected_at is None):
            return
        active = await self._call(lambda api: api.list(status="active", endpoint=self._endpoint))
        if active is None:
            return
        stale = [c.id for c in self._own_holders(active) if c.id is not None]
        if stale:
            await self._terminate(stale, "own_stale",
                                  "the connection a previous run left is still active")

    async def learn(self, connected_at: float) -> None:
        """Find and record the id of the connection that X let in at `connected_at`."""
        self.record = replace(self.record, id=None, connected_at=connected_at)
        await self._save()
        if not self.available:
            return
        active = await self._call(lambda api: api.list(status="active", endpoint=self._endpoint))
        if active is None:
            return
        candidates = own_candidates(active, connected_at, LEARN_TOLERANCE_S)
        if len(candidates) != 1 or candidates[0].id is None:
            self._log.warning(
                "connections.own_unknown", candidates=len(candidates), active=len(active),
                detail=(f"{len(candidates)} active connections on {self._endpoint} began "
                        f"within {LEARN_TOLERANCE_S:g} s of ours: not recording any as ours "
                        "(a stale one of ours will be waited out)"),
            )
            return
        own_id = candidates[0].id
        self._own_ids.add(own_id)
        self.record = replace(self.record, id=own_id)
        await self._save()
        self._log.info("connections.own", id=own_id, connected_at=_when(candidates[0].connected_at))
        if self._on_own is not None:
            await self._on_own(own_id, connected_at)

    async def after_end(
        self, c: Classification, *, established: bool
    ) -> tuple[Classification, bool]:
        """The end `c` as the policy should see it, and whether a slot was freed for us
        (then the reconnect comes after a short fixed delay)."""
        if not self.available:
            return c, False
        if c.reason is Reason.TOO_MANY_CONNECTIONS:
            return c, await self._on_too_many_connections()
        own_id = self.record.id
        if not established or c.reason is Reason.SHUTDOWN or own_id is None:
            return c, False
        history = await self._call(lambda api: api.list(
            status="all", endpoint=self._endpoint, max_pages=HISTORY_PAGES))
        mine = next((x for x in history or () if x.id == own_id), None)
        if mine is None:
            return c, False
        if mine.active:
            await self._terminate([own_id], "own_stale",
                                  f"our connection ended ({c.reason}) but X still counts it")
            return c, False
        if mine.terminated_by_api and own_id not in self._terminated_by_us:
            self.record = replace(self.record, evicted_at=self._clock())
            await self._save()
            detail = (f"our connection {own_id} was terminated through the Connections API "
                      f"by another client of this app (it ended as {c.reason}); not evicting "
                      f"back for {self._settings.evict_min_interval:g} s")
            return Classification(Reason.EVICTED, status=c.status, detail=detail), False
        return c, False

    # --- TooManyConnections ------------------------------------------------------------

    async def _on_too_many_connections(self) -> bool:
        active = await self._call(lambda api: api.list(status="active", endpoint=self._endpoint))
        if active is None:
            return False
        own = self._own_holders(active)
        own_ids = {c.id for c in own}
        for holder in active:
            self._log.warning("connections.holder", id=holder.id, client_ip=holder.client_ip,
                              connected_at=_when(holder.connected_at),
                              own=holder.id in own_ids)
        evict = self._settings.evict
        if evict == "never":
            return False
        freed = False
        if own_ids:
            freed = await self._terminate(
                [i for i in own_ids if i is not None], "own_stale",
                "TooManyConnections: the slot is held by a connection of ours")
        others = [c.id for c in active if c.id is not None and c.id not in own_ids]
        if evict == "endpoint" and others:
            blocked = self._eviction_blocked()
            if blocked is not None:
                self._log.warning("connections.evict_skipped", ids=others, detail=blocked)
            elif await self._terminate(others, "evict",
                                       'x.evict = "endpoint": taking the slot'):
                self.record = replace(self.record, evicted_others_at=self._clock())
                await self._save()
                freed = True
        return freed

    def _eviction_blocked(self) -> str | None:
        interval = self._settings.evict_min_interval
        now = self._clock()
        evicted, evicting = self.record.evicted_at, self.record.evicted_others_at
        if evicted is not None and now - evicted < interval:
            return (f"another client evicted us {now - evicted:.0f} s ago: never evicting back "
                    f"within x.evict_min_interval ({interval:g} s)")
        if evicting is not None and now - evicting < interval:
            return (f"evicted {now - evicting:.0f} s ago already: at most one eviction per "
                    f"x.evict_min_interval ({interval:g} s)")
        return None

    # --- helpers -----------------------------------------------------------------------

    def _own_holders(self, active: Sequence[XConnection]) -> list[XConnection]:
        """The active connections known to be ours: by id, or, when the last run died
        before it learned its id, the one connection that began when it connected."""
        mine = [c for c in active if c.id is not None and c.id in self._own_ids]
        at = self.record.connected_at
        if self.record.id is None and at is not None:
            by_time = own_candidates(active, at, LEARN_TOLERANCE_S)
            if len(by_time) == 1 and by_time[0] not in mine:
                mine.append(by_time[0])
        return mine

    async def _terminate(self, ids: list[str], why: str, detail: str) -> bool:
        self._terminated_by_us.update(ids)
        report = await self._call(lambda api: api.terminate(ids))
        if report is None:
            return False
        done = list(report.succeeded)
        if done:
            self._log.info("connections.terminated", ids=done, why=why, detail=detail)
            self._metrics.connections_terminated.labels(why=why).inc(len(done))
        for kill in report.failed:
            self._log.warning("connections.terminate_failed", id=kill.uuid, why=why,
                              error=kill.error)
        return bool(done)

    async def _call(self, operation: Callable[[ConnectionsApi], Awaitable[T]]) -> T | None:
        """Run one operation; None when the API failed (logged) or is unavailable."""
        if not self.available:
            return None
        try:
            with anyio.fail_after(OPERATION_TIMEOUT_S):
                async with self._api() as api:
                    return await operation(api)
        except ConnectionsUnavailable as exc:
            self.available = False
            self._log.warning(
                "connections.unavailable", status=exc.status, detail=exc.detail,
                consequence="TooManyConnections is waited out without the Connections API "
                            "for the rest of this run (x.connections_api)",
            )
        except (ConnectionsApiError, CredentialsError) as exc:
            self._log.warning("connections.failed", error=str(exc))
        except TimeoutError:
            self._log.warning("connections.failed",
                              error=f"no answer within {OPERATION_TIMEOUT_S:g} s")
        return None

    async def _save(self) -> None:
        if self._store is None:
            return
        try:
            await self._store.save(self.record.to_text())
        except StreamdError as exc:  # a full disk must not stop the stream
            self._log.warning("connections.record_not_saved", error=str(exc))


def describe(c: XConnection) -> dict[str, Any]:
    """A connection as JSON for the command line (`streamd connections list --json`)."""
    return {
        "id": c.id, "endpoint": c.endpoint, "client_ip": c.client_ip,
        "connected_at": _when(c.connected_at), "disconnected_at": _when(c.disconnected_at),
        "disconnect_reason": c.disconnect_reason,
    }
