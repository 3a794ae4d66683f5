"""X's Connections API (`GET /2/connections`, `DELETE /2/connections`,
`DELETE /2/connections/{endpoint_id}`, `DELETE /2/connections/all`, after X's OpenAPI 2.166)
and the connection registry behind it: every stream connect answered 200 creates a
connection, which holds one of the app's connection slots while it is active.

Active and inactive. A connection is active while its stream is open, and also while it is
a *zombie*: its client went away (closed or reset the socket, e.g. the process was
SIGKILLed) without the server ending the stream. X keeps such a connection, and its slot,
until its own timeouts notice (the "TooManyConnections after a restart" reports); here a
zombie stays active for `zombie_seconds` (0: not at all), then becomes inactive with
`disconnect_reason` "client_disconnect" and `disconnected_at` the moment it expired. A
stream end the server decides makes the connection inactive at once. `disconnect_reason`
(X documents only "operator_disconnect", as the schema's example; the others are ours):

| reason                 | when                                                          |
|------------------------|---------------------------------------------------------------|
| `operator_disconnect`  | terminated through the Connections API (or                    |
|                        | `Simulator.terminate_connections`)                            |
| `client_disconnect`    | the client went away; after `zombie_seconds`                  |
| `duplicate_connection` | replaced by a newer connection (`connection_policy` kick_old) |
| `server_disconnect`    | an injected fault ended the stream: operational_disconnect,   |
|                        | close, reset_mid_line                                         |
| `slow_reader`          | dropped as a slow reader (`slow_reader_seconds`, or the       |
|                        | slow_reader_drop fault)                                       |
| `usage_capped`         | the usage cap ended the stream (or the usage_capped fault)    |
| `recovery_complete`    | a `start_time`/`end_time` recovery stream sent its window     |
| `clock_advanced`       | the simulated clock was advanced (time passed while no live   |
|                        | connection was up)                                            |
| `server_shutdown`      | the simulator stopped                                         |

Slots: a live connection holds one of the slots of its endpoint and partition (the tier's:
pro 1, enterprise 2; or `connection_limit`), so each firehose partition has its own. A
recovery connection (start_time/end_time) holds none: it counts against the recovery jobs
(`recovery_jobs_limit`, 2, per endpoint and partition) instead.

Terminating an active connection makes it inactive at once, which frees its slot before the
DELETE answers. If its stream is still open, the stream then ends as `terminate_ending`
says. No capture exists of what X sends to a terminated stream: by default
("operational_disconnect") we send one line
`{"errors":[{"title":"operational-disconnect","disconnect_type":"ForceDisconnect","detail":
"This stream has been disconnected by the operator.","type":"https://api.twitter.com/2/
problems/operational-disconnect"}]}` and end the body cleanly; "close" ends the body with
no message; "reset" resets the TCP connection.

Also our assumptions, as X documents none of it: the request windows of GET (300 / 15 min),
DELETE by uuids and DELETE by endpoint (50 / 15 min each; X documents only DELETE all, 25 /
15 min); the `error_message` texts; pagination tokens (16 characters, like X's); the order
of the listing (newest first)."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streamd.simulator import problems
from streamd.simulator.fields import unknown_parameter_error, validate_enum_list
from streamd.simulator.records import ConnectionRecord
from streamd.simulator.timefmt import iso_from_ms

FILTERED_STREAM = "filtered_stream"
# `endpoints` / `endpoint_id` values in X's OpenAPI 2.166.
ENDPOINTS: tuple[str, ...] = (
    "filtered_stream", "sample_stream", "sample10_stream", "firehose_stream",
    "tweets_compliance_stream", "users_compliance_stream", "tweet_label_stream",
    "firehose_stream_lang_en", "firehose_stream_lang_ja", "firehose_stream_lang_ko",
    "firehose_stream_lang_pt", "likes_firehose_stream", "likes_sample10_stream",
    "likes_compliance_stream",
)
# `connection.fields` values; without the parameter only the schema's required fields.
CONNECTION_FIELDS: tuple[str, ...] = (
    "client_ip", "connected_at", "disconnect_reason", "disconnected_at", "endpoint_name", "id",
)
DEFAULT_FIELDS = frozenset({"endpoint_name", "connected_at"})
STATUSES: tuple[str, ...] = ("active", "inactive", "all")
LIST_PARAMETERS: tuple[str, ...] = (
    "connection.fields", "endpoints", "max_results", "pagination_token", "status",
)
MAX_KILL_UUIDS = 100

OPERATOR_DISCONNECT = "operator_disconnect"
CLIENT_DISCONNECT = "client_disconnect"
DUPLICATE_CONNECTION = "duplicate_connection"
SERVER_DISCONNECT = "server_disconnect"
SLOW_READER = "slow_reader"
USAGE_CAPPED = "usage_capped"
RECOVERY_COMPLETE = "recovery_complete"
CLOCK_ADVANCED = "clock_advanced"
SERVER_SHUTDOWN = "server_shutdown"
DISCONNECT_REASONS: tuple[str, ...] = (
    OPERATOR_DISCONNECT, CLIENT_DISCONNECT, DUPLICATE_CONNECTION, SERVER_DISCONNECT,
    SLOW_READER, USAGE_CAPPED, RECOVERY_COMPLETE, CLOCK_ADVANCED, SERVER_SHUTDOWN,
)

NOT_FOUND_MESSAGE = "Connection not found"
NOT_ACTIVE_MESSAGE = "Connection is not active"
# What a terminated stream is sent before it ends (terminate_ending "operational_disconnect").
OPERATOR_DETAIL = "This stream has been disconnected by the operator."
OPERATOR_DISCONNECT_TYPE = "ForceDisconnect"

_TOKEN_MAGIC = b"\xc0\x77"  # 2 bytes + 8 bytes of cursor: 16 base32hex characters


class StreamHandle(Protocol):
    """What the registry needs of an open stream (StreamSession)."""

    def client_went_away(self) -> bool:
        """True once the client has closed or reset the connection, even if the stream has
        not noticed yet."""
        ...

    def kick(self) -> None:
        """End the stream (a newer connection replaces it); from any thread."""
        ...

    def end_by_operator(self, ending: str) -> None:
        """End the stream as `ending` (a terminate_ending) says; from any thread."""
        ...


@dataclass(eq=False)
class Connection:
    """One connection (mutable; the registry's lock guards it). `stream` is set while its
    stream is open; `zombie_until` once its client went away while zombies are kept."""

    seq: int
    id: str
    endpoint_name: str
    client_ip: str | None
    connected_at: float
    stream: StreamHandle | None = None
    disconnected_at: float | None = None
    disconnect_reason: str | None = None
    zombie_until: float | None = None
    partition: int | None = None
    recovery: bool = False

    @property
    def active(self) -> bool:
        return self.disconnected_at is None

    def snapshot(self) -> ConnectionRecord:
        return ConnectionRecord(
            id=self.id,
            endpoint_name=self.endpoint_name,
            client_ip=self.client_ip,
            connected_at=render_time(self.connected_at),
            disconnected_at=(
                None if self.disconnected_at is None else render_time(self.disconnected_at)
            ),
            disconnect_reason=self.disconnect_reason,
            active=self.active,
            zombie=self.active and self.zombie_until is not None,
            connected_at_epoch=self.connected_at,
            disconnected_at_epoch=self.disconnected_at,
            partition=self.partition,
            recovery=self.recovery,
        )

    def render(self, wanted: frozenset[str]) -> dict[str, Any]:
        """The API's Connection object: the default fields plus those in `wanted`; the
        disconnect fields only once it is inactive."""
        fields = DEFAULT_FIELDS | wanted
        out: dict[str, Any] = {}
        if "id" in fields:
            out["id"] = self.id
        out["endpoint_name"] = self.endpoint_name
        if "client_ip" in fields and self.client_ip is not None:
            out["client_ip"] = self.client_ip
        out["connected_at"] = render_time(self.connected_at)
        if self.disconnected_at is not None:
            if "disconnected_at" in fields:
                out["disconnected_at"] = render_time(self.disconnected_at)
            if "disconnect_reason" in fields and self.disconnect_reason is not None:
                out["disconnect_reason"] = self.disconnect_reason
        return out


def render_time(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-12-02T03:04:05.123Z."""
    return iso_from_ms(int(epoch * 1000))


@dataclass(frozen=True)
class ListQuery:
    status: str = "active"
    endpoints: frozenset[str] | None = None
    max_results: int = 10
    cursor: int | None = None  # seq of the first connection of the page
    fields: frozenset[str] = frozenset()


class ConnectionRegistry:
    """Every connection since the simulator started. Thread-safe (its methods take `lock`,
    the simulator state's). Zombies expire lazily: every method first settles what the
    clock says has expired, so what anyone observes is as if it had expired on time."""

    def __init__(
        self,
        lock: threading.RLock | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        zombie_seconds: float = 0.0,
    ) -> None:
        self._lock = lock if lock is not None else threading.RLock()
        self._clock = clock
        self._new_id = new_id
        self.zombie_seconds = zombie_seconds
        self._all: list[Connection] = []  # oldest first
        self._by_id: dict[str, Connection] = {}
        self._active: dict[str, Connection] = {}  # oldest first

    def now(self) -> float:
        return self._clock()

    # --- life of a connection ------------------------------------------------------------

    def open(
        self,
        endpoint_name: str,
        client_ip: str | None,
        stream: StreamHandle | None,
        partition: int | None = None,
        recovery: bool = False,
        at: float | None = None,
    ) -> Connection:
        with self._lock:
            record = Connection(
                seq=len(self._all) + 1, id=self._new_id(), endpoint_name=endpoint_name,
                client_ip=client_ip, connected_at=self._clock() if at is None else at,
                stream=stream,
                partition=partition, recovery=recovery,
            )
            self._all.append(record)
            self._by_id[record.id] = record
            self._active[record.id] = record
            return record

    def client_gone(self, record: Connection, at: float | None = None) -> None:
        """The client went away without the server ending the stream: a zombie for
        `zombie_seconds`, or inactive at once."""
        with self._lock:
            if not record.active or record.zombie_until is not None:
                return
            when = self._clock() if at is None else at
            record.stream = None
            if self.zombie_seconds > 0:
                record.zombie_until = when + self.zombie_seconds
            else:
                self._close(record, CLIENT_DISCONNECT, when)

    def server_ended(self, record: Connection, reason: str) -> StreamHandle | None:
        """The server ends the stream (`reason`): inactive at once. Returns the stream it
        had, if still open. A connection already inactive, or a zombie, keeps its state."""
        with self._lock:
            if not record.active or record.zombie_until is not None:
                return None
            stream = record.stream
            self._close(record, reason, self._clock())
            return stream

    def replace(self, record: Connection) -> StreamHandle | None:
        """A newer connection takes this one's slot (kick_old): inactive at once, zombie or
        not, as "duplicate_connection". Returns the stream it had, if still open."""
        with self._lock:
            if not record.active:
                return None
            stream = record.stream
            self._close(record, DUPLICATE_CONNECTION, self._clock())
            return stream

    def stream_ended(self, record: Connection, reason: str | None) -> None:
        """The stream has ended: decided by the server (`reason`) or, with None, because
        the client went away."""
        if reason is None:
            self.client_gone(record)
        else:
            self.server_ended(record, reason)

    def _close(self, record: Connection, reason: str, at: float) -> None:
        record.disconnected_at = at
        record.disconnect_reason = reason
        record.stream = None
        self._active.pop(record.id, None)

    def _settle(self) -> None:
        """Expire zombies whose time is up, and turn streams whose client has gone (not yet
        noticed by the stream) into zombies or inactive connections."""
        now = self._clock()
        for record in list(self._active.values()):
            if record.zombie_until is not None:
                if now >= record.zombie_until:
                    self._close(record, CLIENT_DISCONNECT, record.zombie_until)
            elif record.stream is not None and record.stream.client_went_away():
                self.client_gone(record, now)

    def holders(self) -> list[Connection]:
        """The active connections (open streams and zombies), oldest first."""
        with self._lock:
            self._settle()
            return list(self._active.values())

    def group(self, endpoint_name: str, partition: int | None, recovery: bool) -> list[
        Connection
    ]:
        """The active connections of one endpoint and partition: the live ones (holding its
        slots) or the recovery ones (its recovery jobs), oldest first."""
        return [r for r in self.holders()
                if r.endpoint_name == endpoint_name and r.partition == partition
                and r.recovery == recovery]

    # --- termination ---------------------------------------------------------------------

    def terminate(self, connection_id: str, ending: str) -> str | None:
        """Terminate one connection; None on success, else the error message."""
        with self._lock:
            self._settle()
            record = self._by_id.get(connection_id)
            if record is None:
                return NOT_FOUND_MESSAGE
            if not record.active:
                return NOT_ACTIVE_MESSAGE
            stream = record.stream
            self._close(record, OPERATOR_DISCONNECT, self._clock())
        if stream is not None:
            stream.end_by_operator(ending)
        return None

    def kill(self, ids: Iterable[str], ending: str) -> dict[str, Any]:
        """Terminate each id in order; the `data` of the Kill*Response."""
        results: list[dict[str, Any]] = []
        for connection_id in ids:
            error = self.terminate(connection_id, ending)
            if error is None:
                results.append({"uuid": connection_id, "success": True})
            else:
                results.append({"uuid": connection_id, "success": False,
                                "error_message": error})
        succeeded = sum(1 for r in results if r["success"])
        return {"successful_kills": succeeded, "failed_kills": len(results) - succeeded,
                "results": results}

    def active_ids(self, endpoint_name: str | None = None) -> list[str]:
        """Ids of the active connections (on `endpoint_name`), oldest first."""
        return [r.id for r in self.holders()
                if endpoint_name is None or r.endpoint_name == endpoint_name]

    # --- listing -------------------------------------------------------------------------

    def snapshot(self) -> list[ConnectionRecord]:
        """Every connection, newest first."""
        with self._lock:
            self._settle()
            return [r.snapshot() for r in reversed(self._all)]

    def lookup(self, query: ListQuery) -> dict[str, Any]:
        """The GET /2/connections body for `query`."""
        with self._lock:
            self._settle()
            matching = [
                r for r in reversed(self._all)
                if (query.cursor is None or r.seq <= query.cursor)
                and (query.status == "all" or r.active == (query.status == "active"))
                and (query.endpoints is None or r.endpoint_name in query.endpoints)
            ]
            page = matching[: query.max_results]
            meta: dict[str, Any] = {"result_count": len(page)}
            if len(matching) > len(page):
                meta["next_token"] = encode_token(matching[len(page)].seq)
            if not page:
                return {"meta": meta}
            return {"data": [r.render(query.fields) for r in page], "meta": meta}

    def known_cursor(self, cursor: int) -> bool:
        with self._lock:
            return 1 <= cursor <= len(self._all)


def encode_token(cursor: int) -> str:
    raw = _TOKEN_MAGIC + cursor.to_bytes(8, "big")
    return base64.b32hexencode(raw).decode("ascii").lower()


def decode_token(token: str) -> int | None:
    if len(token) != 16:
        return None
    try:
        raw = base64.b32hexdecode(token.upper())
    except ValueError:
        return None
    if raw[:2] != _TOKEN_MAGIC:
        return None
    return int.from_bytes(raw[2:], "big")


# --- request parsing (400 invalid-request items) --------------------------------------------


def parse_list_query(
    pairs: list[tuple[str, str]], registry: ConnectionRegistry
) -> tuple[ListQuery, list[dict[str, Any]]]:
    """GET /2/connections query; returns the query and the invalid-request error items."""
    errors: list[dict[str, Any]] = []
    status = "active"
    endpoints: frozenset[str] | None = None
    max_results = 10
    cursor: int | None = None
    wanted: frozenset[str] = frozenset()
    for name, value in pairs:
        if name == "status":
            if value in STATUSES:
                status = value
            else:
                errors.append(problems.param_error(
                    name, value,
                    f"The `status` query parameter value [{value}] is not one of"
                    f" [{','.join(STATUSES)}]",
                ))
        elif name == "endpoints":
            endpoints, found = validate_enum_list(name, value, ENDPOINTS)
            errors.extend(found)
        elif name == "connection.fields":
            wanted, found = validate_enum_list(name, value, CONNECTION_FIELDS)
            errors.extend(found)
        elif name == "max_results":
            if value.isdigit() and 1 <= int(value) <= 100:
                max_results = int(value)
            else:
                errors.append(problems.param_error(
                    name, value,
                    f"The `max_results` query parameter value [{value}] is not between 1"
                    " and 100",
                ))
        elif name == "pagination_token":
            decoded = decode_token(value)
            if decoded is None or not registry.known_cursor(decoded):
                errors.append(problems.param_error(
                    name, value,
                    f"The `pagination_token` query parameter value [{value}] is not valid",
                ))
            else:
                cursor = decoded
        else:
            errors.append(unknown_parameter_error(name, value, LIST_PARAMETERS))
    query = ListQuery(status=status, endpoints=endpoints, max_results=max_results,
                      cursor=cursor, fields=wanted)
    return query, errors


def parse_kill_body(raw: bytes) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """DELETE /2/connections body `{"uuids": [1..100 strings]}`; returns the uuids (None
    when the body does not hold a list of strings) and the invalid-request error items."""

    def bad(message: str, parameters: dict[str, list[str]] | None = None) -> list[
        dict[str, Any]
    ]:
        return [{"parameters": parameters or {}, "message": message}]

    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return None, bad("Request body is not valid JSON.")
    if body is None:
        return None, bad("field is required", {"uuids": []})
    if not isinstance(body, dict):
        return None, bad("Request body must be a JSON object.")
    extra = sorted(set(body) - {"uuids"})
    if extra:
        return None, bad(f"Unrecognized fields in request body: {extra}")
    if "uuids" not in body:
        return None, bad("field is required", {"uuids": []})
    uuids = body["uuids"]
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        return None, bad("`uuids` must be an array of strings.", {"uuids": []})
    if not 1 <= len(uuids) <= MAX_KILL_UUIDS:
        return uuids, bad(
            f"`uuids` must contain between 1 and {MAX_KILL_UUIDS} items, not {len(uuids)}.",
            {"uuids": [str(len(uuids))]},
        )
    return uuids, []


def endpoint_error(value: str) -> dict[str, Any] | None:
    """The invalid-request item for a DELETE /2/connections/{endpoint_id} not in the enum."""
    if value in ENDPOINTS:
        return None
    return problems.param_error(
        "endpoint_id", value,
        f"The `endpoint_id` path parameter value [{value}] is not one of"
        f" [{','.join(ENDPOINTS)}]",
    )
