"""The event store: interactions posted at serving time (``POST /v1/events``), read back as the user's
recent history by the ingress. Plain Python, no Ray.

A store is opened from a URI, so that other backends can join later under their own scheme:

    ``sqlite:///ABS/PATH.db[?timeout=SECONDS]``   SQLite file (three slashes, like ``file:///``)
    ``/abs/path.db`` or ``rel/path.db``            the same, as a plain path
    ``redis://[:PASSWORD@]host:6379/0[?prefix=distilrec&timeout=5&id_ttl=SECONDS]``
                                                   Redis (``rediss://`` for TLS), shared by many pods;
                                                   ``id_ttl``: how long an event id is kept (default
                                                   604800, 7 days); see :class:`RedisEventStore`

The SQLite store runs in WAL mode with ``synchronous=FULL``: :meth:`EventStore.append` returns only
after its whole batch is committed and the write-ahead log is fsynced, and a batch is stored
all-or-nothing. Several processes on one node can share the file (each store object opens its own
connections; writers wait up to ``timeout`` seconds for the write lock). The file's parent folders
are created. SQLite needs a local filesystem: several pods on several nodes need the shared backend.

An event may carry a client-chosen ``event_id`` (1 to 128 characters, no NUL). The store keeps each id
it has stored, store-wide (not per user), and stores an event whose id it already holds no second time,
so a client that did not learn whether a batch was stored can send it again with the same ids.
:meth:`EventStore.append` returns an :class:`AppendResult`: ``accepted`` (the events of the call, all
stored now) and ``new`` (those this call stored). How long ids are remembered depends on the backend:
as long as their events in SQLite, ``event_id_ttl_s`` (7 days by default) in Redis.

Besides events, a store keeps what every serving replica must agree on and what must survive a restart:

* **new items** (``POST /v1/items``): :meth:`EventStore.add_items` / :meth:`EventStore.items_since`, each
  with its text, attributes and text embedding, numbered by a store-wide sequence;
* a small **sync state** ``(items_seq, reload_generation)`` read once per request
  (:meth:`EventStore.sync_state`), so that a replica that is behind refreshes before it answers;
* **impressions** (:meth:`EventStore.record_impressions` / :meth:`EventStore.impressions`): what a
  recommendation showed, by its ``recommendation_id``, so that a later event on a shown item counts as a
  hit for the arm that showed it. Kept ``impression_ttl_s`` seconds (default one day); SQLite also keeps
  at most ``max_impressions`` (default 1,000,000), Redis lets them expire. Losing one loses a hit
  count, never an event: they are written in batches, not fsynced one by one.
* **shared states** (:meth:`EventStore.read_state` / :meth:`EventStore.compare_and_set_state`): a small
  JSON document per key with a generation, written only by the caller that names the generation it read,
  so that replicas agree on one decision (a canary's weight) whoever makes it first.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "events.db")
>>> store = open_event_store(f"sqlite://{path}")
>>> store.append([Event("u1", "i3", timestamp=20, event_id="e1"), Event("u1", "i7", timestamp=10)])
AppendResult(accepted=2, new=2)
>>> store.append([Event("u1", "i3", timestamp=20, event_id="e1")])  # a retry: e1 is stored already
AppendResult(accepted=1, new=0)
>>> store.history("u1")
['i7', 'i3']
>>> store.close()
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
REDIS_SCHEMES = {"redis", "rediss"}
SCHEMA_VERSION = 2
REDIS_PASSWORD_ENV = "DISTILREC_REDIS_PASSWORD"
MAX_EVENT_ID_LEN = 128  # characters
DEFAULT_EVENT_ID_TTL_S = 7 * 24 * 3600  # how long the Redis store remembers an event id
DEFAULT_IMPRESSION_TTL_S = 24 * 3600  # how long an impression can still be matched by feedback
DEFAULT_MAX_IMPRESSIONS = 1_000_000  # SQLite: impressions kept at most (the oldest go first)


class EventStoreError(RuntimeError):
    """The store could not read or write (locked beyond its timeout, read-only, I/O error, …).
    Nothing of a failed :meth:`EventStore.append` batch is stored, and the caller may retry, unless
    ``outcome_unknown``: a remote store received the write but neither its answer nor a later look
    came back, so it may have been applied. A retry then stores no event with an ``event_id`` twice
    (within the backend's id lifetime); events without one it may store twice."""

    def __init__(self, message: str, outcome_unknown: bool = False):
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class UnsupportedStoreError(ValueError):
    """The store URI names a scheme this build does not implement, or is malformed."""


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: ``user_id`` interacted with ``item_id`` at ``timestamp`` (unix seconds; ``None``
    means now when it is stored).

    ``event_id`` (optional, 1 to :data:`MAX_EVENT_ID_LEN` characters, no NUL) names the event for the
    whole store: an event whose id is stored already, by any user's batch, is not stored again (its other
    fields are not compared). ``None`` stores the event every time it is sent."""

    user_id: str
    item_id: str
    timestamp: int | None = None
    type: str = "view"
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What :meth:`EventStore.append` did with a batch. ``accepted``: the events of the call, every one of
    them stored once it returns (by this call or, for an ``event_id`` seen before, an earlier one);
    ``new``: those this call stored (an id repeated within the batch counts once)."""

    accepted: int
    new: int

    @property
    def duplicates(self) -> int:
        """``accepted - new``: events not stored again because their ``event_id`` was stored already."""
        return self.accepted - self.new


@dataclass(frozen=True)
class NewItem:
    """An item added at serving time: its text, attributes (``{"genres": ["Comedy"]}``) and its text
    embedding ``(text_dim,)`` float32 from ``encoder`` (the artifact's text encoder)."""

    item_id: str
    title: str
    text: str
    attributes: dict[str, list[str]]
    embedding: np.ndarray
    encoder: str

    def to_json(self) -> str:
        return json.dumps({"item_id": self.item_id, "title": self.title, "text": self.text,
                           "attributes": self.attributes, "encoder": self.encoder,
                           "embedding": np.asarray(self.embedding, dtype=np.float32).tolist()})

    @classmethod
    def from_json(cls, data: str | bytes) -> "NewItem":
        d = json.loads(data)
        return cls(d["item_id"], d["title"], d["text"], d["attributes"],
                   np.asarray(d["embedding"], dtype=np.float32), d["encoder"])


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: ``seq`` grows with every write; ``committed`` is the unix time (float) at
    which its batch was written (for the event-to-effect metric); ``type`` is the event's type."""

    item_id: str
    timestamp: int
    seq: int
    committed: float
    type: str = "view"


@dataclass(frozen=True, slots=True)
class Impression:
    """What one recommendation showed: ``recommendation_id`` (the answer's, unique), the ``arm`` that
    answered, the ``user_id`` (``None`` for a request without one), the ``items`` shown in rank order
    (rank 1 first) and ``at`` (unix seconds, float)."""

    recommendation_id: str
    arm: str
    user_id: str | None
    items: tuple[str, ...]
    at: float

    def rank(self, item_id: str) -> int | None:
        """The 1-based rank at which ``item_id`` was shown, ``None`` when it was not."""
        try:
            return self.items.index(item_id) + 1
        except ValueError:
            return None

    def to_json(self) -> str:
        return json.dumps({"arm": self.arm, "user_id": self.user_id, "items": list(self.items), "at": self.at})

    @classmethod
    def from_json(cls, recommendation_id: str, data: str | bytes) -> "Impression":
        d = json.loads(data)
        return cls(recommendation_id, d["arm"], d["user_id"], tuple(d["items"]), float(d["at"]))


@dataclass(frozen=True)
class SharedState:
    """A shared state as read: ``generation`` (0 before the first write, +1 per write) and ``value``
    (the JSON object written last; ``None`` before the first write)."""

    generation: int
    value: dict | None


MAX_STATE_KEY = 200  # characters
MAX_STATE_BYTES = 64 << 10  # a state's JSON


def _check_state(key: str, generation: int, value: Mapping[str, Any] | None = None) -> str | None:
    """The value's JSON; ``ValueError`` for a key, generation or value a store cannot keep."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_STATE_KEY or "\x00" in key:
        raise ValueError(f"a state key is 1 to {MAX_STATE_KEY} characters without NUL, got {key!r}")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation must be an int >= 0, got {generation!r}")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"a state is a JSON object, got {type(value).__name__}")
    body = json.dumps(dict(value), sort_keys=True, allow_nan=False)
    if len(body) > MAX_STATE_BYTES:
        raise ValueError(f"a state's JSON is at most {MAX_STATE_BYTES} bytes, got {len(body)}")
    return body


def _check_impressions(impressions: Iterable[Impression]) -> list[Impression]:
    out = list(impressions)
    for imp in out:
        if not isinstance(imp, Impression) or not isinstance(imp.recommendation_id, str) or not imp.recommendation_id:
            raise ValueError(f"not an impression: {imp!r}")
    return out


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


def _check_items(items: Iterable[NewItem]) -> list[NewItem]:
    items = list(items)
    for it in items:
        if not isinstance(it, NewItem) or not isinstance(it.item_id, str) or not it.item_id:
            raise ValueError(f"not a new item: {it!r}")
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("the same item id twice in one batch")
    return items


class EventStore(ABC):
    """Append-only interaction log keyed by user, shared by every replica that opens the same URI."""

    @abstractmethod
    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult:
        """Store the batch durably, all or nothing, skipping each event whose ``event_id`` the store holds
        already (or that an earlier event of the batch carries); returns ``AppendResult(accepted, new)``:
        ``accepted`` the events passed, ``new`` those stored by this call. Events are :class:`Event` or
        mappings with its field names.

        Raises ``ValueError`` for a malformed event (a wrong type, an empty id, an ``event_id`` that is not
        1 to 128 characters or holds NUL) and :class:`EventStoreError` when the store cannot write; in both
        cases nothing of the batch is stored (see :class:`EventStoreError` for a remote store's unknown
        outcome)."""

    def history(self, user_id: str, limit: int | None = None) -> list[str]:
        """The item ids of the user's most recent ``limit`` events (all when ``None``), oldest first
        (by timestamp, then by arrival). An unknown user has ``[]``."""
        return [e.item_id for e in self.events(user_id, limit)]

    @abstractmethod
    def events(self, user_id: str, limit: int | None = None) -> list["StoredEvent"]:
        """Like :meth:`history`, with each event's timestamp, store sequence and commit time."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`EventStoreError` unless the store can be read."""

    @abstractmethod
    def add_items(self, items: Iterable[NewItem]) -> int:
        """Store new items durably, all or nothing (an id stored before is replaced: its text changed);
        returns the store's item sequence after the write. Raises like :meth:`append`."""

    @abstractmethod
    def items_since(self, seq: int) -> list[tuple[int, NewItem]]:
        """``[(seq, item), ...]`` of the items written after ``seq`` (the latest version of each), in
        sequence order; ``items_since(0)`` is every new item."""

    @abstractmethod
    def sync_state(self) -> tuple[int, int]:
        """``(items_seq, reload_generation)``: one cheap read that tells a replica whether it is behind."""

    @abstractmethod
    def request_reload(self) -> int:
        """Bump the reload generation (``POST /v1/model/reload``); returns the new one."""

    @abstractmethod
    def record_impressions(self, impressions: Iterable[Impression]) -> None:
        """Keep these impressions (one write for the batch), replacing one whose ``recommendation_id`` is
        kept already, and drop those past the store's retention. Raises ``ValueError`` for a value that is
        not an :class:`Impression` and :class:`EventStoreError` when the store cannot write."""

    @abstractmethod
    def impressions(self, recommendation_ids: Iterable[str]) -> dict[str, Impression]:
        """``{recommendation_id: impression}`` of those ids the store still keeps (one read); an unknown
        or expired id is absent. Raises :class:`EventStoreError` when the store cannot be read."""

    @abstractmethod
    def read_state(self, key: str) -> SharedState:
        """The shared state under ``key`` (generation 0 and ``None`` when never written). Raises
        :class:`EventStoreError` when the store cannot be read."""

    @abstractmethod
    def compare_and_set_state(self, key: str, generation: int, value: Mapping[str, Any]) -> bool:
        """Write ``value`` (a JSON object) under ``key`` as generation ``generation + 1`` when the stored
        generation is still ``generation``; ``False`` (nothing written) when another writer moved it first.
        Writing the same value again after a lost answer reports ``True``. Raises ``ValueError`` for a key,
        generation or value it cannot keep and :class:`EventStoreError` when the store cannot write."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    user_id TEXT    NOT NULL CHECK (length(user_id) > 0),
    item_id TEXT    NOT NULL CHECK (length(item_id) > 0),
    ts      INTEGER NOT NULL CHECK (ts >= 0),
    type    TEXT    NOT NULL CHECK (length(type) > 0),
    committed REAL  NOT NULL DEFAULT 0,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS events_user_ts_seq ON events (user_id, ts, seq);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT    PRIMARY KEY CHECK (length(item_id) > 0),
    seq     INTEGER NOT NULL,
    body    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS items_seq ON items (seq);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('items_seq', 0), ('reload', 0);
CREATE TABLE IF NOT EXISTS impressions (
    seq     INTEGER PRIMARY KEY,
    rec_id  TEXT    NOT NULL UNIQUE CHECK (length(rec_id) > 0),
    at      REAL    NOT NULL,
    body    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_at ON impressions (at);
CREATE TABLE IF NOT EXISTS shared_state (
    key        TEXT    PRIMARY KEY,
    generation INTEGER NOT NULL,
    body       TEXT    NOT NULL
);
"""
# The impressions and shared_state tables are new within version 2: a build without them never reads them, and a
# file written by such a build gets them when this build opens it.
# Created after the column exists (a file written before event ids has the table without it).
_EVENT_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id) WHERE event_id IS NOT NULL"

Row = tuple[str, str, int, str, str | None]  # user_id, item_id, ts, type, event_id


def _row(e: Event | Mapping[str, Any], now: int) -> Row:
    """Type checks (so that SQLite never coerces a value) and the ``event_id`` check; the other contents
    are checked by the schema (SQLite) or :meth:`RedisEventStore.append`."""
    if isinstance(e, Mapping):
        try:
            e = Event(**e)
        except TypeError as err:
            raise ValueError(f"invalid event {dict(e)!r}: {err}") from None
    if not isinstance(e, Event):
        raise ValueError(f"not an event: {e!r}")
    ts = now if e.timestamp is None else e.timestamp
    for name, value, kind in (("user_id", e.user_id, str), ("item_id", e.item_id, str), ("type", e.type, str)):
        if not isinstance(value, kind):
            raise ValueError(f"event {name} must be a string, got {type(value).__name__}")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError(f"event timestamp must be an int (unix seconds), got {type(ts).__name__}")
    eid = e.event_id
    if eid is not None:
        if not isinstance(eid, str):
            raise ValueError(f"event event_id must be a string or null, got {type(eid).__name__}")
        if not 1 <= len(eid) <= MAX_EVENT_ID_LEN or "\x00" in eid:
            shown = eid if len(eid) <= 40 else eid[:40] + "…"
            raise ValueError(f"event event_id must be 1 to {MAX_EVENT_ID_LEN} characters without NUL, got "
                             f"{shown!r} ({len(eid)} characters)")
    return e.user_id, e.item_id, ts, e.type, eid


def _rows(events: Iterable[Event | Mapping[str, Any]]) -> tuple[list[Row], int]:
    """``(rows, accepted)``: the checked rows of a batch without the repeats of an ``event_id`` within it
    (the first event with an id is kept), and how many events the batch had."""
    now = int(time.time())
    rows = [_row(e, now) for e in events]
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r[4] is not None:
            if r[4] in seen:
                continue
            seen.add(r[4])
        unique.append(r)
    return unique, len(rows)


class SQLiteEventStore(EventStore):
    """The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

    Every call takes a connection from a small pool for its duration and gives it back, so calls on
    different threads (Ray Serve runs sync methods in a thread pool) each have their own connection: a
    writer waiting for the lock never holds up readers, and WAL lets readers run beside one writer.
    Connections are pooled rather than kept per thread because Ray Serve runs every call of a sync
    method on a new worker thread: a connection per thread, each with its own page cache, would grow a
    replica's memory with every request.
    At most ``IDLE_CONNECTIONS`` idle connections are kept; a connection that saw an error is closed.
    """

    IDLE_CONNECTIONS = 8

    def __init__(self, path: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S,
                 impression_ttl_s: float = DEFAULT_IMPRESSION_TTL_S, max_impressions: int = DEFAULT_MAX_IMPRESSIONS):
        if not impression_ttl_s > 0 or not isinstance(max_impressions, int) or max_impressions <= 0:
            raise ValueError(f"impression_ttl_s and max_impressions must be > 0, got {impression_ttl_s!r}, "
                             f"{max_impressions!r}")
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.timeout_s = float(timeout_s)
        self.impression_ttl_s, self.max_impressions = float(impression_ttl_s), max_impressions
        self._idle: list[sqlite3.Connection] = []
        self._open_count = 0  # connections open now, idle or in use
        self._lock = threading.Lock()
        self._closed = False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:
            raise EventStoreError(f"cannot create the folder of event store {self.path}: {e}") from None
        try:
            with self._conn() as conn:
                if conn.execute("PRAGMA user_version").fetchone()[0] > SCHEMA_VERSION:
                    raise EventStoreError(f"event store {self.path} has a newer schema than this build reads")
                conn.executescript(_SCHEMA)
                # Columns added since the file was written; one opener at a time (two would both add them).
                conn.execute("BEGIN IMMEDIATE")
                try:
                    columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
                    if "committed" not in columns:  # a schema-1 file: add the column (old rows get 0)
                        conn.execute("ALTER TABLE events ADD COLUMN committed REAL NOT NULL DEFAULT 0")
                    # Old rows have no id. The version stays 2: builds without event ids read and write
                    # such a file correctly (their rows get NULL), so they may still open it.
                    if "event_id" not in columns:
                        conn.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
                    conn.execute(_EVENT_ID_INDEX)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass  # the connection is closed on the way out
                    raise
        except sqlite3.Error as e:
            raise EventStoreError(f"cannot initialise event store {self.path}: {e}") from None

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r}, timeout_s={self.timeout_s})"

    # connections ---------------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call: an idle one from the pool or a new one. It goes back to the pool
        when the call ends normally, and is closed when the call raised (its state is then unknown)."""
        with self._lock:
            if self._closed:
                raise EventStoreError("event store is closed")
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                self._open_count += 1
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._lock:
                    self._open_count -= 1
                raise
        ok = False
        try:
            yield conn
            ok = True
        finally:
            with self._lock:
                keep = ok and not self._closed and len(self._idle) < self.IDLE_CONNECTIONS
                if keep:
                    self._idle.append(conn)
                else:
                    self._open_count -= 1
            if not keep:
                _close_quietly(conn)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise EventStoreError(f"cannot open event store {self.path}: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            _close_quietly(conn)
            raise EventStoreError(f"cannot open event store {self.path}: {e}") from None
        if str(mode).lower() != "wal":
            _close_quietly(conn)
            raise EventStoreError(f"event store {self.path}: the filesystem does not support SQLite WAL "
                                  f"mode (got {mode!r}); use a local disk")
        return conn

    def open_connections(self) -> int:
        """Connections open now, idle or in use (at most the calls in flight, or ``IDLE_CONNECTIONS``)."""
        with self._lock:
            return self._open_count

    # EventStore ----------------------------------------------------------------------------------

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult:
        """See :meth:`EventStore.append`. Event ids are a column of the events table (unique where set),
        written in the event's own transaction: an id is remembered as long as its event is kept."""
        rows, accepted = _rows(events)
        if not rows:
            return AppendResult(accepted, 0)

        def insert(conn: sqlite3.Connection) -> int:
            committed = time.time()
            cur = conn.executemany(
                "INSERT INTO events (user_id, item_id, ts, type, event_id, committed) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING",
                [(*r, committed) for r in rows])
            return cur.rowcount  # rows inserted: a known id inserts none

        return AppendResult(accepted, int(self._write("event", insert)))

    def events(self, user_id: str, limit: int | None = None) -> list[StoredEvent]:
        _check_limit(limit)
        rows = self._read(
            "SELECT item_id, ts, seq, committed, type FROM (SELECT item_id, ts, seq, committed, type FROM events "
            "WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?) ORDER BY ts, seq",
            (user_id, -1 if limit is None else limit), what="read")
        return [StoredEvent(r[0], int(r[1]), int(r[2]), float(r[3]), r[4]) for r in rows]

    def ping(self) -> None:
        self._read("SELECT 1 FROM events LIMIT 1", what=None)

    def _write(self, what: str, fn) -> Any:
        """Run ``fn(conn)`` in one immediate transaction; all or nothing."""
        with self._conn() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to timeout_s)
                out = fn(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the connection is closed on the way out
                if isinstance(e, sqlite3.IntegrityError):
                    raise ValueError(f"invalid {what} (nothing of the batch stored): {e}") from None
                raise EventStoreError(f"event store {self.path}: {what} write failed, nothing stored: {e}") from None
        return out

    def _read(self, sql: str, args: tuple = (), what: str | None = "read") -> list[tuple]:
        with self._conn() as conn:
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise EventStoreError(f"event store {self.path}: {what + ' failed: ' if what else ''}{e}") from None

    def add_items(self, items: Iterable[NewItem]) -> int:
        items = _check_items(items)

        def write(conn: sqlite3.Connection) -> int:
            seq = conn.execute("SELECT value FROM meta WHERE key = 'items_seq'").fetchone()[0]
            for it in items:
                seq += 1
                conn.execute("INSERT INTO items (item_id, seq, body) VALUES (?, ?, ?) ON CONFLICT (item_id) "
                             "DO UPDATE SET seq = excluded.seq, body = excluded.body", (it.item_id, seq, it.to_json()))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'items_seq'", (seq,))
            return seq

        return self._write("items", write) if items else self.sync_state()[0]

    def items_since(self, seq: int) -> list[tuple[int, NewItem]]:
        rows = self._read("SELECT seq, body FROM items WHERE seq > ? ORDER BY seq", (int(seq),))
        return [(int(q), NewItem.from_json(body)) for q, body in rows]

    def sync_state(self) -> tuple[int, int]:
        meta = dict(self._read("SELECT key, value FROM meta"))
        return int(meta.get("items_seq", 0)), int(meta.get("reload", 0))

    def request_reload(self) -> int:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'reload'")
            return conn.execute("SELECT value FROM meta WHERE key = 'reload'").fetchone()[0]

        return int(self._write("reload", write))

    def record_impressions(self, impressions: Iterable[Impression]) -> None:
        """See :meth:`EventStore.record_impressions`. One transaction inserts the batch and deletes the
        impressions older than ``impression_ttl_s`` and those beyond the newest ``max_impressions`` (both
        by index: cheap when there is nothing to delete)."""
        rows = [(imp.recommendation_id, float(imp.at), imp.to_json()) for imp in _check_impressions(impressions)]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO impressions (rec_id, at, body) VALUES (?, ?, ?) ON CONFLICT (rec_id) "
                             "DO UPDATE SET at = excluded.at, body = excluded.body", rows)
            conn.execute("DELETE FROM impressions WHERE at < ?", (time.time() - self.impression_ttl_s,))
            conn.execute("DELETE FROM impressions WHERE seq <= (SELECT max(seq) FROM impressions) - ?",
                         (self.max_impressions,))

        self._write("impression", write)

    def impressions(self, recommendation_ids: Iterable[str]) -> dict[str, Impression]:
        ids = list(dict.fromkeys(i for i in recommendation_ids if isinstance(i, str)))
        out: dict[str, Impression] = {}
        oldest = time.time() - self.impression_ttl_s
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters is 999 in old builds
            chunk = ids[start:start + 500]
            rows = self._read(f"SELECT rec_id, body FROM impressions WHERE at >= ? AND rec_id IN "
                              f"({', '.join('?' * len(chunk))})", (oldest, *chunk))
            out.update((r, Impression.from_json(r, body)) for r, body in rows)
        return out

    def read_state(self, key: str) -> SharedState:
        _check_state(key, 0)
        rows = self._read("SELECT generation, body FROM shared_state WHERE key = ?", (key,))
        return SharedState(int(rows[0][0]), json.loads(rows[0][1])) if rows else SharedState(0, None)

    def compare_and_set_state(self, key: str, generation: int, value: Mapping[str, Any]) -> bool:
        body = _check_state(key, generation, value)

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT generation FROM shared_state WHERE key = ?", (key,)).fetchone()
            if (row[0] if row else 0) != generation:
                return False
            conn.execute("INSERT INTO shared_state (key, generation, body) VALUES (?, ?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET generation = excluded.generation, body = excluded.body",
                         (key, generation + 1, body))
            return True

        return self._write("state", write)

    def count(self) -> int:
        """All stored events (for tests and operators)."""
        return int(self._read("SELECT count(*) FROM events")[0][0])

    def close(self) -> None:
        """Close the idle connections now; those in use are closed when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open_count -= len(idle)
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


# -------------------------------------------------------------------------------------------- Redis

# A batch of events, each stored unless its event id is held by another write; run atomically by Redis.
# KEYS[1..n]: each event's sorted set, then the id keys. ARGV[1]: 'w' writes, 'r' only looks; ARGV[2]: the
# id keys' lifetime in seconds; ARGV[3]: n; then per event i: its member, its score (the timestamp) and
# the index in KEYS of its id key (0: no id). 'w' stores, as ours, each event that has no id, whose id is
# free, or whose id holds this very member (this batch sent again); the id key then holds the member.
# 'r' writes nothing and counts as ours each event this batch stored (its member is in its set, or its id
# holds it). Returns {ours, held by an earlier write, not stored ('r' only)}. Every read comes before the
# first write: Redis does not undo the writes of a script that fails part-way.
_APPEND_LUA = """
local write, ttl, n = ARGV[1] == 'w', ARGV[2], tonumber(ARGV[3])
local ours, before, absent = {}, 0, 0
for i = 1, n do
  local member, slot = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 3])
  local held = false
  if slot == 0 then
    if write or redis.call('ZSCORE', KEYS[i], member) then held = member end
  else
    held = redis.call('GET', KEYS[slot])
  end
  if held == member or (write and held == false) then
    ours[#ours + 1] = i
  elseif held == false then
    absent = absent + 1
  else
    before = before + 1
  end
end
if write then
  for _, i in ipairs(ours) do
    local member, slot = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 3])
    redis.call('ZADD', KEYS[i], ARGV[3 * i + 2], member)
    if slot > 0 then redis.call('SET', KEYS[slot], member, 'EX', ttl) end
  end
end
return {#ours, before, absent}
"""

# A shared state's compare-and-set. KEYS[1]: the state's hash (fields gen, body); ARGV[1]: the generation
# the caller read; ARGV[2]: the new body. Writes gen + 1 when gen is ARGV[1]; a resend of a write that
# landed (gen is ARGV[1] + 1 with this very body) answers 1 as well.
_STATE_CAS_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local want = tonumber(ARGV[1])
if gen == want then
  redis.call('HSET', KEYS[1], 'gen', gen + 1, 'body', ARGV[2])
  return 1
end
if gen == want + 1 and redis.call('HGET', KEYS[1], 'body') == ARGV[2] then return 1 end
return 0
"""


class RedisEventStore(EventStore):
    """A Redis server shared by every pod (redis-py; ``redis://`` or ``rediss://`` for TLS).

    Keys (under ``prefix``, default ``distilrec``): ``{prefix}:ev:{user_id}`` a sorted set per user
    (score = timestamp, member = ``"{seq:016d}|{type}|{item_id}"``, so equal timestamps keep their
    arrival order), ``{prefix}:seq`` the event counter, ``{prefix}:items`` a hash of new items,
    ``{prefix}:items:seq`` their sequence (a sorted set), ``{prefix}:meta`` the sync state, and
    ``{prefix}:eid:{event_id}`` per event id a string (the member of the event stored under that id) that
    expires ``event_id_ttl_s`` seconds (default 7 days, URI option ``id_ttl``) after it was written: an
    event sent again with the same id within that time is not stored again; after it, it is. The ids
    are bounded by that lifetime, not by the events, which are kept. ``{prefix}:imp:{recommendation_id}``
    per impression a string (JSON) that expires ``impression_ttl_s`` seconds (default one day) after it
    was written; ``{prefix}:state:{key}`` per shared state a hash (``gen``, ``body``).

    A batch of events (or items) is written in one ``MULTI``/``EXEC`` transaction (for events, one Lua
    script in it that checks the ids and stores the new events): Redis applies it whole or not at all,
    and :meth:`append` returns after ``EXEC`` is acknowledged. That reply means
    *durable* only when the server persists every write before it answers: run Redis with
    ``appendonly yes`` and ``appendfsync always`` (with the default ``everysec`` up to a second of
    acknowledged events can be lost on a crash of the Redis host). The store checks these settings
    when it opens (where ``CONFIG GET`` is allowed) and logs a warning when they are weaker.
    The password comes from the URL or, when the URL has none, from ``$DISTILREC_REDIS_PASSWORD``.

    ``timeout_s`` bounds each try of a command; a command that times out or loses its connection is
    sent once more (a pooled connection may predate a Redis restart), so one call takes at most about
    twice ``timeout_s``. redis-py 8's default would resend ten times, with back-off up to 1 s between
    tries (by its settings: over 10 s for a write answered late with a 1 s timeout, beyond the
    ingress's 10 s store deadline).
    """

    def __init__(self, url: str, prefix: str = "distilrec", timeout_s: float = DEFAULT_TIMEOUT_S,
                 event_id_ttl_s: int = DEFAULT_EVENT_ID_TTL_S, impression_ttl_s: int = DEFAULT_IMPRESSION_TTL_S):
        for name, ttl in (("event_id_ttl_s", event_id_ttl_s), ("impression_ttl_s", impression_ttl_s)):
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
                raise ValueError(f"{name} must be a positive int (seconds), got {ttl!r}")
        self.impression_ttl_s = impression_ttl_s
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis_mod = redis
        parts = urlsplit(url)
        password = unquote(parts.password) if parts.password else os.environ.get(REDIS_PASSWORD_ENV) or None
        self.url_safe = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
        self.prefix = prefix
        self.timeout_s = float(timeout_s)
        self.event_id_ttl_s = event_id_ttl_s
        self._client = lambda tries: redis.Redis.from_url(
            url, password=password, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
            health_check_interval=30, retry=Retry(NoBackoff(), tries - 1))
        try:
            self.r = self._client(2)  # reads and counters: one resend (see above)
            self._single = self._client(1)  # transactions: _execute resends them itself, then looks
            self.r.ping()
        except redis.RedisError as e:
            raise EventStoreError(f"cannot reach the Redis event store {self.url_safe}: {e}") from None
        self.durable = self._check_durability()

    def __repr__(self) -> str:  # never shows the password
        return f"RedisEventStore({self.url_safe!r}, prefix={self.prefix!r})"

    def _check_durability(self) -> bool | None:
        try:
            cfg = self.r.config_get("append*")
        except self._redis_mod.RedisError:
            log.info("Redis event store %s: CONFIG GET not allowed; cannot check persistence", self.url_safe)
            return None
        ok = cfg.get("appendonly") == "yes" and cfg.get("appendfsync") == "always"
        if not ok:
            log.warning("Redis event store %s: appendonly=%s appendfsync=%s; acknowledged events are durable "
                        "only with appendonly yes and appendfsync always", self.url_safe,
                        cfg.get("appendonly"), cfg.get("appendfsync"))
        return ok

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, what: str, fn):
        try:
            return fn()
        except self._redis_mod.RedisError as e:
            raise EventStoreError(f"Redis event store {self.url_safe}: {what} failed: {e}") from None

    def _execute(self, what: str, build: Callable[[Any], None], landed: Callable[[Any], bool],
                 unknown: str = "a retry may store it twice") -> list | None:
        """Run the ``MULTI … EXEC`` transaction that ``build(pipeline)`` queues, sent at most twice (a
        pooled connection may predate a Redis restart; a resend writes the same members and fields again,
        no duplicate). Redis applies a transaction it has received whether or not its answer comes back,
        so when every try failed after sending (a timeout, or a connection lost after the commands went
        out), look once, ``landed(client)``: applied, the write succeeded; not applied, nothing is stored
        (the connections that sent it are closed, and Redis drops what it had not run); no answer to the
        look either, the outcome is unknown (``unknown`` ends that error's message: what a retry does).
        A try that could not connect sent nothing.

        Returns the transaction's replies, or ``None`` when they were lost and the look found it applied."""
        redis = self._redis_mod
        client = self._single
        missing = []
        for _ in range(2):
            pipe = client.pipeline(transaction=True)
            build(pipe)
            try:
                return pipe.execute()
            except (redis.TimeoutError, redis.ConnectionError) as e:
                missing.append(e)
            except redis.RedisError as e:  # Redis answered with an error: the transaction was not applied
                raise EventStoreError(f"Redis event store {self.url_safe}: {what} failed, nothing stored: "
                                      f"{e}") from None
        failed = f"Redis event store {self.url_safe}: {what} failed, nothing stored: {missing[-1]}"
        if all("connecting to" in str(e) for e in missing):  # redis-py's words for a failed connect
            raise EventStoreError(failed)
        try:
            applied = landed(client)
        except redis.RedisError as e:
            raise EventStoreError(
                f"Redis event store {self.url_safe}: {what}: no answer ({missing[-1]}), nor to a look afterwards "
                f"({e}); it may have been applied, and {unknown}", outcome_unknown=True) from None
        if not applied:
            raise EventStoreError(failed)
        log.warning("Redis event store %s: %s was applied but its answer did not come (%s)", self.url_safe, what,
                    missing[-1])
        return None

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult:
        """See :meth:`EventStore.append`. The ids are checked and the new events stored by one script,
        atomically; an id is remembered ``event_id_ttl_s`` seconds (see the class docstring)."""
        rows, accepted = _rows(events)
        for user, item, ts, typ, _ in rows:
            if not user or not item or not typ or ts < 0:
                raise ValueError(f"invalid event (nothing of the batch stored): {(user, item, ts, typ)!r}")
        if not rows:
            return AppendResult(accepted, 0)

        # The sequence numbers first (a counter alone stores no event), then the events in one transaction.
        last = self._call("write (nothing stored)", lambda: self.r.incrby(self._k("seq"), len(rows)))
        committed = int(time.time() * 1000)
        keys, id_keys, args = [], [], []
        for n, (user, item, ts, typ, eid) in enumerate(rows):
            seq = last - len(rows) + 1 + n
            keys.append(self._k("ev", user))
            slot = 0
            if eid is not None:
                id_keys.append(self._k("eid", eid))
                slot = len(rows) + len(id_keys)
            # The type is quoted: a "|" in it would otherwise shift the item id (ids may hold "|" too).
            args += [f"{seq:016d}|{committed}|{quote(typ, safe='')}|{item}", ts, slot]
        keys += id_keys

        def run(client, mode: str):
            return client.eval(_APPEND_LUA, len(keys), *keys, mode, self.event_id_ttl_s, len(rows), *args)

        looked: dict[str, int] = {}

        def landed(client) -> bool:
            # Applied if any event is ours; all held by earlier writes is stored as well (nothing was new).
            ours, _before, absent = run(client, "r")
            looked["new"] = int(ours)
            return ours > 0 or absent == 0

        unknown = ("a retry with the same event ids stores none of them twice" if len(id_keys) == len(rows) else
                   "a retry may store the events without an event_id twice")
        replies = self._execute("write", lambda pipe: run(pipe, "w"), landed, unknown)
        return AppendResult(accepted, int(replies[0][0]) if replies is not None else looked["new"])

    def events(self, user_id: str, limit: int | None = None) -> list[StoredEvent]:
        _check_limit(limit)
        if limit == 0:
            return []
        start = 0 if limit is None else -limit
        members = self._call("read", lambda: self.r.zrange(self._k("ev", user_id), start, -1, withscores=True))
        out = []
        for m, ts in members:
            seq, committed, typ, item = m.decode().split("|", 3)
            out.append(StoredEvent(item, int(ts), int(seq), int(committed) / 1000, unquote(typ)))
        return out

    def ping(self) -> None:
        self._call("ping", self.r.ping)

    def record_impressions(self, impressions: Iterable[Impression]) -> None:
        """See :meth:`EventStore.record_impressions`: one pipeline of ``SET … EX impression_ttl_s`` (sent
        again once when its answer is lost: the same values, no harm)."""
        impressions = _check_impressions(impressions)
        if not impressions:
            return

        def write() -> None:
            pipe = self.r.pipeline(transaction=False)
            for imp in impressions:
                pipe.set(self._k("imp", imp.recommendation_id), imp.to_json(), ex=self.impression_ttl_s)
            pipe.execute()

        self._call("impression write", write)

    def impressions(self, recommendation_ids: Iterable[str]) -> dict[str, Impression]:
        ids = list(dict.fromkeys(i for i in recommendation_ids if isinstance(i, str)))
        if not ids:
            return {}
        bodies = self._call("read", lambda: self.r.mget([self._k("imp", i) for i in ids]))
        return {i: Impression.from_json(i, b) for i, b in zip(ids, bodies) if b is not None}

    def read_state(self, key: str) -> SharedState:
        _check_state(key, 0)
        gen, body = self._call("read", lambda: self.r.hmget(self._k("state", key), ["gen", "body"]))
        return SharedState(int(gen), json.loads(body)) if gen is not None and body is not None else SharedState(0, None)

    def compare_and_set_state(self, key: str, generation: int, value: Mapping[str, Any]) -> bool:
        """See :meth:`EventStore.compare_and_set_state`: one Lua script (sent again once when its answer
        is lost; the script then recognises its own write)."""
        body = _check_state(key, generation, value)
        return bool(self._call("state write", lambda: self.r.eval(_STATE_CAS_LUA, 1, self._k("state", key),
                                                                   generation, body)))

    def count(self) -> int:
        """All stored events (for tests and operators): a SCAN over the user keys."""
        def n():
            return sum(self.r.zcard(k) for k in self.r.scan_iter(self._k("ev", "*"), count=1000))
        return int(self._call("read", n))

    def add_items(self, items: Iterable[NewItem]) -> int:
        items = _check_items(items)
        if not items:
            return self.sync_state()[0]

        last = int(self._call("items write (nothing stored)",
                              lambda: self.r.hincrby(self._k("meta"), "items_seq", len(items))))
        first = last - len(items) + 1

        def build(pipe) -> None:
            for n, it in enumerate(items):
                pipe.hset(self._k("items"), it.item_id, it.to_json())
                pipe.zadd(self._k("items", "seq"), {it.item_id: first + n})

        self._execute("items write", build, lambda r: r.zscore(self._k("items", "seq"), items[0].item_id) == first)
        return last

    def items_since(self, seq: int) -> list[tuple[int, NewItem]]:
        def read():
            ids = self.r.zrangebyscore(self._k("items", "seq"), f"({int(seq)}", "+inf", withscores=True)
            if not ids:
                return []
            bodies = self.r.hmget(self._k("items"), [i for i, _ in ids])
            return [(int(q), NewItem.from_json(b)) for (_, q), b in zip(ids, bodies) if b is not None]
        return self._call("read", read)

    def sync_state(self) -> tuple[int, int]:
        items, reload = self._call("read", lambda: self.r.hmget(self._k("meta"), ["items_seq", "reload"]))
        return int(items or 0), int(reload or 0)

    def request_reload(self) -> int:
        return int(self._call("write", lambda: self.r.hincrby(self._k("meta"), "reload", 1)))

    def close(self) -> None:
        for client in (self.r, self._single):
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


# ------------------------------------------------------------------------------------------ factory

def parse_store_uri(uri: str) -> tuple[str, str, dict[str, Any]]:
    """``(scheme, location, options)`` of a store URI; raises :class:`UnsupportedStoreError`.

    >>> parse_store_uri("sqlite:///tmp/distilrec/events.db?timeout=2")
    ('sqlite', '/tmp/distilrec/events.db', {'timeout_s': 2.0})
    >>> parse_store_uri("data/events.db")
    ('sqlite', 'data/events.db', {})
    """
    uri = str(uri).strip()
    if not uri:
        raise UnsupportedStoreError("empty event store URI")
    if "://" not in uri:
        location, options = uri, {}
    else:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in REDIS_SCHEMES:
            return scheme, uri, _redis_options(uri, parts)
        if scheme != "sqlite":
            raise UnsupportedStoreError(
                f"unsupported event store scheme {scheme!r}; supported: sqlite:///ABS/PATH.db, a plain file path, "
                "redis://host:port/db or rediss://…")
        if parts.netloc:
            raise UnsupportedStoreError(
                f"a sqlite URI has no host (got {parts.netloc!r}); write sqlite:///ABS/PATH.db with three slashes")
        location = "/" + unquote(parts.path).lstrip("/")
        if location == "/":
            raise UnsupportedStoreError(f"no file path in event store URI {uri!r}")
        options = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key != "timeout":
                raise UnsupportedStoreError(f"unknown sqlite event store option {key!r} (known: timeout)")
            options["timeout_s"] = _timeout_option(value)
    if location.strip() in (":memory:", "/:memory:") or location.startswith("file:"):
        raise UnsupportedStoreError("the event store must be a file shared by every replica, not an in-memory "
                                    "database")
    return "sqlite", location, options


def _timeout_option(value: str) -> float:
    """The ``?timeout=SECONDS`` option of a store URI (both backends)."""
    try:
        timeout = float(value)
    except ValueError:
        raise UnsupportedStoreError(f"timeout must be seconds, got {value!r}") from None
    if not timeout > 0:
        raise UnsupportedStoreError(f"timeout must be > 0, got {value!r}")
    return timeout


def _redis_options(uri: str, parts) -> dict[str, Any]:
    try:
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise UnsupportedStoreError("the Redis URL has an invalid port") from None
    if not parts.hostname:
        raise UnsupportedStoreError("a Redis URL needs a host: redis://[:password@]host:port/db")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise UnsupportedStoreError(f"the Redis database must be a number, got {parts.path.strip('/')!r}")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            if not value:
                raise UnsupportedStoreError("prefix must not be empty")
            options["prefix"] = value
        elif key == "timeout":
            options["timeout_s"] = _timeout_option(value)
        elif key == "id_ttl":
            if not value.isdigit() or int(value) <= 0:
                raise UnsupportedStoreError(f"id_ttl must be a positive whole number of seconds, got {value!r}")
            options["event_id_ttl_s"] = int(value)
        else:
            raise UnsupportedStoreError(
                f"unknown Redis event store option {key!r} (known: prefix, timeout, id_ttl)")
    return options


def redact(uri: str) -> str:
    """The store URI without a password (for logs and error messages).

    >>> redact("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    parts = urlsplit(str(uri))
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return str(uri)


def open_event_store(uri: str) -> EventStore:
    """Open (creating when needed) the store that ``uri`` names; see the module docstring."""
    scheme, location, options = parse_store_uri(uri)
    if scheme in REDIS_SCHEMES:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise UnsupportedStoreError("the Redis event store needs redis-py, a dependency of distilrec: "
                                        "pip install 'redis>=8.2,<9'") from None
        # The query string holds distilrec's options only; redis-py gets the URL without it.
        return RedisEventStore(urlsplit(location)._replace(query="").geturl(), **options)
    return SQLiteEventStore(location, **options)
