"""The event store (``distilrec/stores.py``): real SQLite files in ``tmp_path``, several store objects
and several processes on one file, a held write lock, and re-opening after the writer is gone."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from distilrec.stores import (
    AppendResult,
    Event,
    EventStoreError,
    Impression,
    SQLiteEventStore,
    UnsupportedStoreError,
    open_event_store,
    parse_store_uri,
)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "nested" / "dir" / "events.db"


@pytest.fixture
def store(db):
    s = open_event_store(f"sqlite://{db}")
    yield s
    s.close()


def test_append_and_history_in_time_order(store, db):
    assert db.exists()  # parent folders are created
    assert store.append([Event("u1", "a", 10), Event("u1", "b", 30), Event("u2", "x", 5)]).new == 3
    # An event with an earlier timestamp that arrives later sorts by its timestamp ...
    assert store.append([{"user_id": "u1", "item_id": "c", "timestamp": 20, "type": "click"}]).new == 1
    # ... and equal timestamps keep their arrival order.
    assert store.append([Event("u1", "d", 30), Event("u1", "e", 30)]).new == 2
    assert store.history("u1") == ["a", "c", "b", "d", "e"]
    assert store.history("u2") == ["x"]
    assert store.history("nobody") == []
    assert store.count() == 6


def test_history_limit_keeps_the_most_recent(store):
    store.append([Event("u", f"i{t}", t) for t in (5, 1, 4, 2, 3)])
    assert store.history("u", limit=2) == ["i4", "i5"]
    assert store.history("u", limit=0) == []
    assert store.history("u", limit=100) == ["i1", "i2", "i3", "i4", "i5"]
    with pytest.raises(ValueError):
        store.history("u", limit=-1)


def test_default_timestamp_is_now(store):
    before = int(time.time())
    store.append([Event("u", "a")])
    ts = sqlite3.connect(store.path).execute("SELECT ts, type FROM events").fetchone()
    assert before <= ts[0] <= int(time.time()) and ts[1] == "view"


def test_a_batch_is_all_or_nothing(store):
    store.append([Event("u", "kept", 1)])
    # The third event breaks a schema constraint inside the transaction: the first two are rolled back.
    with pytest.raises(ValueError, match="nothing of the batch stored"):
        store.append([Event("u", "a", 2), Event("u", "b", 3), Event("u", "", 4)])
    with pytest.raises(ValueError):
        store.append([Event("u", "c", 5), Event("u", "d", -1)])
    with pytest.raises(ValueError):  # caught before the transaction: a wrong type is never coerced
        store.append([Event("u", "e", 6), Event("u", 7, 7)])
    with pytest.raises(ValueError):
        store.append([Event("u", "f", 8), {"user_id": "u", "item_id": "g", "surprise": 1}])
    assert store.history("u") == ["kept"]
    assert store.append([]) == AppendResult(0, 0)
    store.append([Event("u", "after", 9)])  # the store still writes after a failed batch
    assert store.history("u") == ["kept", "after"]


def test_write_fails_cleanly_while_another_writer_holds_the_lock(db):
    store = SQLiteEventStore(db, timeout_s=0.3)
    store.append([Event("u", "a", 1)])
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with pytest.raises(EventStoreError, match="nothing stored"):
        store.append([Event("u", "b", 2), Event("u", "c", 3)])
    assert time.monotonic() - t0 >= 0.25  # it waited for the busy timeout
    assert store.history("u") == ["a"]  # WAL: readers are not blocked by the writer
    store.ping()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.append([Event("u", "b", 2)]).new == 1
    assert store.history("u") == ["a", "b"]
    store.close()


def test_events_survive_closing_and_reopening(db):
    with open_event_store(str(db)) as s:
        s.append([Event("u", "a", 1), Event("u", "b", 2)])
    with open_event_store(f"sqlite://{db}") as s:
        assert s.history("u") == ["a", "b"]


def test_events_survive_a_killed_writer_process(db):
    # The writer exits without closing anything right after append() returns: what append()
    # acknowledged must be in the file.
    code = (
        "import os, sys\n"
        "from distilrec.stores import Event, open_event_store\n"
        "s = open_event_store(sys.argv[1])\n"
        "r = s.append([Event('u', 'a', 1), Event('u', 'b', 2)])\n"
        "print(r.accepted, r.new, flush=True)\n"
        "os._exit(0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, f"sqlite://{db}"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 2"
    with open_event_store(str(db)) as s:
        assert s.history("u") == ["a", "b"]


def test_two_store_objects_on_one_file_see_each_others_writes(db):
    a, b = open_event_store(str(db)), open_event_store(f"sqlite://{db}")
    a.append([Event("u", "from-a", 1)])
    assert b.history("u") == ["from-a"]
    b.append([Event("u", "from-b", 2)])
    assert a.history("u") == ["from-a", "from-b"]
    a.close()
    b.close()


def _writer(path: str, worker: int, batches: int) -> None:
    s = open_event_store(path)
    for i in range(batches):
        s.append([Event(f"w{worker}", f"i{i}", i), Event("shared", f"w{worker}-{i}", i)])
    s.close()


def test_several_processes_append_concurrently(db):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open_event_store(str(db)) as s:
        assert s.count() == 3 * 40 * 2
        for w in range(3):
            assert s.history(f"w{w}") == [f"i{i}" for i in range(40)]
        assert len(s.history("shared")) == 120


def test_threads_share_one_store_object(store):
    def work(t):
        for i in range(20):
            store.append([Event(f"t{t}", str(i), i)])
            assert store.history(f"t{t}")[-1] == str(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count() == 80


def test_a_thread_per_call_does_not_pile_up_connections(store):
    """Ray Serve (2.60, either request path) runs each call of a sync method on a new worker thread.
    A connection per thread then stayed open for the store's lifetime (the FeatureEncoder's memory grew
    by about 120 KB per request); pooled connections stay bounded however many threads come and go."""
    store.append([Event("u", "a", 1)])
    for _ in range(100):
        th = threading.Thread(target=lambda: (store.sync_state(), store.events("u", 10)))
        th.start()
        th.join()
    assert store.open_connections() == 1


def test_concurrent_calls_get_their_own_connections_and_idle_ones_are_bounded(db):
    store = SQLiteEventStore(db)
    n = store.IDLE_CONNECTIONS + 4
    barrier = threading.Barrier(n)
    seen, errors = set(), []

    def one(t):
        try:
            with store._conn() as conn:  # n calls in flight at once
                seen.add(id(conn))
                barrier.wait(timeout=10)
            store.append([Event(f"t{t}", "a", 1)])
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(seen) == n  # no connection was shared between calls in flight
    assert store.open_connections() == store.IDLE_CONNECTIONS
    assert store.count() == n
    store.close()
    assert store.open_connections() == 0


def test_a_connection_that_saw_an_error_is_not_reused(store):
    with store._conn() as first:
        pass
    with pytest.raises(EventStoreError):
        store._read("SELECT nonsense FROM nowhere")
    assert store.open_connections() == 0  # the failed call's connection (the idle one) was closed
    with store._conn() as conn:
        assert conn is not first
    assert store.history("u") == []


def test_closing_while_a_call_is_in_flight_closes_its_connection_after(db):
    store = SQLiteEventStore(db)
    with store._conn() as conn:
        store.close()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the call in flight finishes
    assert store.open_connections() == 0
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with pytest.raises(EventStoreError, match="closed"):
        store.count()


def test_uri_forms():
    assert parse_store_uri("sqlite:///tmp/x/events.db") == ("sqlite", "/tmp/x/events.db", {})
    assert parse_store_uri("sqlite:////tmp/x/events.db") == ("sqlite", "/tmp/x/events.db", {})
    assert parse_store_uri("sqlite:///tmp/e.db?timeout=0.5") == ("sqlite", "/tmp/e.db", {"timeout_s": 0.5})
    assert parse_store_uri("/var/lib/events.db") == ("sqlite", "/var/lib/events.db", {})


@pytest.mark.parametrize("uri, match", [
    ("redis://localhost:6379/x", "database must be a number"),
    ("redis:///0", "needs a host"),
    ("redis://localhost:6379/0?pool=3", "unknown Redis event store option"),
    ("rediss://cache:6380/1?timeout=-1", "timeout must be > 0"),
    ("postgres://db/events", "unsupported event store scheme 'postgres'"),
    ("sqlite://somehost/events.db", "no host"),
    ("sqlite:///", "no file path"),
    ("sqlite:///tmp/e.db?pool=3", "unknown sqlite event store option"),
    ("sqlite:///tmp/e.db?timeout=soon", "timeout must be seconds"),
    ("sqlite:///tmp/e.db?timeout=0", "timeout must be > 0"),
    (":memory:", "in-memory"),
    ("", "empty"),
])
def test_unsupported_uris_are_clear_errors(uri, match):
    with pytest.raises(UnsupportedStoreError, match=match):
        open_event_store(uri)


def test_redis_uri_forms():
    assert parse_store_uri("redis://:pw@cache:6379/2?prefix=rec&timeout=2") == (
        "redis", "redis://:pw@cache:6379/2?prefix=rec&timeout=2", {"prefix": "rec", "timeout_s": 2.0})
    assert parse_store_uri("rediss://cache:6380/0")[0] == "rediss"


def test_unreachable_redis_is_a_store_error():
    with pytest.raises(EventStoreError, match="cannot reach"):
        open_event_store("redis://127.0.0.1:1/0?timeout=0.5")


def test_unwritable_location_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EventStoreError):
        open_event_store(str(blocker / "events.db"))
    with pytest.raises(EventStoreError):  # a file that is not a SQLite database
        open_event_store(str(blocker))


def test_closed_store_refuses_work(db):
    s = open_event_store(str(db))
    s.close()
    with pytest.raises(EventStoreError):
        s.history("u")


# The events table as files written before event ids have it (schema version 2), and before the commit
# time (version 1).
_OLD_EVENTS_TABLE = """
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,
    user_id TEXT    NOT NULL CHECK (length(user_id) > 0),
    item_id TEXT    NOT NULL CHECK (length(item_id) > 0),
    ts      INTEGER NOT NULL CHECK (ts >= 0),
    type    TEXT    NOT NULL CHECK (length(type) > 0){committed}
);
CREATE INDEX events_user_ts_seq ON events (user_id, ts, seq);
"""


def _old_file(db, version: int) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    committed = ",\n    committed REAL  NOT NULL DEFAULT 0" if version >= 2 else ""
    conn.executescript(_OLD_EVENTS_TABLE.format(committed=committed))
    if version >= 2:
        conn.executescript("""
            CREATE TABLE items (item_id TEXT PRIMARY KEY CHECK (length(item_id) > 0), seq INTEGER NOT NULL,
                                body TEXT NOT NULL);
            CREATE INDEX items_seq ON items (seq);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO meta (key, value) VALUES ('items_seq', 0), ('reload', 3);
            INSERT INTO events (user_id, item_id, ts, type, committed) VALUES ('u', 'a', 1, 'view', 1.5),
                                                                              ('u', 'b', 2, 'click', 2.5);""")
    else:
        conn.execute("INSERT INTO events (user_id, item_id, ts, type) VALUES ('u', 'a', 1, 'view'), "
                     "('u', 'b', 2, 'click')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_written_before_event_ids_upgrades_in_place_and_keeps_its_events(db, version):
    _old_file(db, version)
    with open_event_store(str(db)) as s:
        assert [(e.item_id, e.timestamp, e.type) for e in s.events("u")] == [("a", 1, "view"), ("b", 2, "click")]
        assert s.append([Event("u", "c", 3, event_id="e1"), Event("u", "d", 4)]) == AppendResult(2, 2)
        assert s.append([Event("u", "c", 3, event_id="e1")]) == AppendResult(1, 0)
        assert s.history("u") == ["a", "b", "c", "d"]
        if version == 2:
            assert s.sync_state() == (0, 3)
    conn = sqlite3.connect(db)
    assert "event_id" in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    # A build without event ids can still open the file (same version) and write to it (its rows get no id).
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.execute("INSERT INTO events (user_id, item_id, ts, type, committed) VALUES ('u', 'e', 5, 'view', 0)")
    conn.commit()
    conn.close()
    with open_event_store(str(db)) as s:  # opening an upgraded file again changes nothing
        assert s.history("u") == ["a", "b", "c", "d", "e"]
        assert s.append([Event("u", "c", 3, event_id="e1")]) == AppendResult(1, 0)


def test_several_openers_upgrade_an_old_file_at_once(db):
    _old_file(db, 2)
    errors = []

    def open_one():
        try:
            with SQLiteEventStore(db) as s:
                s.append([Event("u", "x", 9, event_id="same")])
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    with open_event_store(str(db)) as s:
        assert s.history("u") == ["a", "b", "x"]


def test_a_retry_after_a_failed_write_stores_the_ids_once(db):
    store = SQLiteEventStore(db, timeout_s=0.2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    batch = [Event("u", "a", 1, event_id="e1"), Event("u", "b", 2, event_id="e2")]
    with pytest.raises(EventStoreError, match="nothing stored"):
        store.append(batch)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.append(batch) == AppendResult(2, 2)
    assert store.append(batch) == AppendResult(2, 0)
    assert [e.item_id for e in store.events("u")] == ["a", "b"]
    store.close()


def test_impressions_beyond_the_newest_max_impressions_are_dropped(db):
    with SQLiteEventStore(db, max_impressions=3) as store:
        now = time.time()
        store.record_impressions([Impression(f"r{i}", "a", "u", ("x",), now) for i in range(5)])
        assert sorted(store.impressions([f"r{i}" for i in range(5)])) == ["r2", "r3", "r4"]
        store.record_impressions([Impression("r5", "b", None, ("y",), now)])
        assert sorted(store.impressions([f"r{i}" for i in range(6)])) == ["r3", "r4", "r5"]
    with pytest.raises(ValueError, match="max_impressions"):
        SQLiteEventStore(db, max_impressions=0)


def test_a_file_without_the_impressions_table_gets_it(db):
    """A file written before impressions were kept opens, and keeps them from then on."""
    with SQLiteEventStore(db) as store:
        store.append([Event("u", "a", 1)])
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE impressions")
    conn.commit()
    conn.close()
    with SQLiteEventStore(db) as store:
        store.record_impressions([Impression("r1", "a", "u", ("a", "b"), time.time())])
        assert store.impressions(["r1"])["r1"].rank("b") == 2 and store.history("u") == ["a"]
