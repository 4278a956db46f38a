"""The event store: interactions posted at serving time (``POST /v1/events``), read back as the user's
recent history by the feature encoder. Plain Python, no Ray.

A store is opened from a URI, so that other backends can join later under their own scheme:

    ``sqlite:///ABS/PATH.db[?timeout=SECONDS]``   SQLite file (three slashes, like ``file:///``)
    ``/abs/path.db`` or ``rel/path.db``            the same, as a plain path
    ``redis://host:6379/0``                        reserved for a shared Redis backend (not implemented)

The SQLite store runs in WAL mode with ``synchronous=FULL``: :meth:`EventStore.append` returns only
after its whole batch is committed and the write-ahead log is fsynced, and a batch is stored
all-or-nothing. Several processes on one node can share the file (each store object opens its own
connections; writers wait up to ``timeout`` seconds for the write lock). The file's parent folders
are created. SQLite needs a local filesystem: several pods on several nodes need the shared backend.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "events.db")
>>> store = open_event_store(f"sqlite://{path}")
>>> store.append([Event("u1", "i3", timestamp=20), Event("u1", "i7", timestamp=10)])
2
>>> store.history("u1")
['i7', 'i3']
>>> store.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
PLANNED_SCHEMES = {"redis", "rediss"}
SCHEMA_VERSION = 1


class EventStoreError(RuntimeError):
    """The store could not read or write (locked beyond its timeout, read-only, I/O error, …).
    Nothing of a failed :meth:`EventStore.append` batch is stored; the caller may retry."""


class UnsupportedStoreError(ValueError):
    """The store URI names a scheme this build does not implement, or is malformed."""


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: ``user_id`` interacted with ``item_id`` at ``timestamp`` (unix seconds; ``None``
    means now when it is stored)."""

    user_id: str
    item_id: str
    timestamp: int | None = None
    type: str = "view"


class EventStore(ABC):
    """Append-only interaction log keyed by user, shared by every replica that opens the same URI."""

    @abstractmethod
    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> int:
        """Store every event durably, all or nothing; returns how many were stored.

        Raises ``ValueError`` for a malformed event and :class:`EventStoreError` when the store cannot
        write; in both cases nothing of the batch is stored."""

    @abstractmethod
    def history(self, user_id: str, limit: int | None = None) -> list[str]:
        """The item ids of the user's most recent ``limit`` events (all when ``None``), oldest first
        (by timestamp, then by arrival). An unknown user has ``[]``."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`EventStoreError` unless the store can be read."""

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
    type    TEXT    NOT NULL CHECK (length(type) > 0)
);
CREATE INDEX IF NOT EXISTS events_user_ts_seq ON events (user_id, ts, seq);
"""


def _row(e: Event | Mapping[str, Any], now: int) -> tuple[str, str, int, str]:
    """Type checks only (so that SQLite never coerces a value); contents are checked by the schema."""
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
    return e.user_id, e.item_id, ts, e.type


class SQLiteEventStore(EventStore):
    """The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

    Each thread gets its own connection (Ray Serve runs sync methods in a thread pool), so a writer
    waiting for the lock never holds up readers; WAL lets readers run beside one writer.
    """

    def __init__(self, path: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.timeout_s = float(timeout_s)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:
            raise EventStoreError(f"cannot create the folder of event store {self.path}: {e}") from None
        conn = self._conn()
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] > SCHEMA_VERSION:
                raise EventStoreError(f"event store {self.path} has a newer schema than this build reads")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            self._drop(conn)
            raise EventStoreError(f"cannot initialise event store {self.path}: {e}") from None

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r}, timeout_s={self.timeout_s})"

    # connections ---------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise EventStoreError("event store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise EventStoreError(f"event store {self.path}: the filesystem does not support SQLite WAL "
                                      f"mode (got {mode!r}); use a local disk")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            raise EventStoreError(f"cannot open event store {self.path}: {e}") from None
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _drop(self, conn: sqlite3.Connection) -> None:
        """Forget a connection after an error, so that the next call starts from a clean one."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:
            pass

    # EventStore ----------------------------------------------------------------------------------

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> int:
        now = int(time.time())
        rows = [_row(e, now) for e in events]
        if not rows:
            return 0
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to timeout_s)
            conn.executemany("INSERT INTO events (user_id, item_id, ts, type) VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop(conn)
            if isinstance(e, sqlite3.IntegrityError):
                raise ValueError(f"invalid event (nothing of the batch stored): {e}") from None
            self._drop(conn)
            raise EventStoreError(f"event store {self.path}: write failed, nothing stored: {e}") from None
        return len(rows)

    def history(self, user_id: str, limit: int | None = None) -> list[str]:
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        conn = self._conn()
        try:
            rows = conn.execute(
                "SELECT item_id FROM (SELECT item_id, ts, seq FROM events WHERE user_id = ? "
                "ORDER BY ts DESC, seq DESC LIMIT ?) ORDER BY ts, seq",
                (user_id, -1 if limit is None else limit),
            ).fetchall()
        except sqlite3.Error as e:
            self._drop(conn)
            raise EventStoreError(f"event store {self.path}: read failed: {e}") from None
        return [r[0] for r in rows]

    def ping(self) -> None:
        conn = self._conn()
        try:
            conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as e:
            self._drop(conn)
            raise EventStoreError(f"event store {self.path}: {e}") from None

    def count(self) -> int:
        """All stored events (for tests and operators)."""
        conn = self._conn()
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.Error as e:
            self._drop(conn)
            raise EventStoreError(f"event store {self.path}: read failed: {e}") from None

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
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
        if scheme in PLANNED_SCHEMES:
            raise UnsupportedStoreError(
                f"event store scheme {scheme!r} is not implemented yet; "
                "use sqlite:///ABS/PATH.db (or a plain file path)")
        if scheme != "sqlite":
            raise UnsupportedStoreError(
                f"unsupported event store scheme {scheme!r}; supported: sqlite:///ABS/PATH.db or a plain file path")
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
            try:
                options["timeout_s"] = float(value)
            except ValueError:
                raise UnsupportedStoreError(f"timeout must be seconds, got {value!r}") from None
            if not options["timeout_s"] > 0:
                raise UnsupportedStoreError(f"timeout must be > 0, got {value!r}")
    if location.strip() in (":memory:", "/:memory:") or location.startswith("file:"):
        raise UnsupportedStoreError("the event store must be a file shared by every replica, not an in-memory "
                                    "database")
    return "sqlite", location, options


def open_event_store(uri: str) -> EventStore:
    """Open (creating when needed) the store that ``uri`` names; see the module docstring."""
    scheme, location, options = parse_store_uri(uri)
    return SQLiteEventStore(location, **options)
