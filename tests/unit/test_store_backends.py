"""What every event store backend must do, run against SQLite and a real redis-server: events in time
order, new items with their embeddings, the sync state, impressions (looked up by recommendation id, then
expired), shared states (compare-and-set on their generation), and data that outlives the store object (and, for Redis, a restart of the server)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import numpy as np
import pytest

from distilrec.stores import (
    AppendResult,
    Event,
    EventStoreError,
    Impression,
    NewItem,
    RedisEventStore,
    SharedState,
    SQLiteEventStore,
    open_event_store,
    parse_store_uri,
    redact,
)


@pytest.fixture(params=["sqlite", "redis"])
def store_uri(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'events.db'}"
    server = request.getfixturevalue("redis_server")
    # A fresh key prefix per test: the server is shared by the session.
    return server.url() + f"?prefix=t{uuid.uuid4().hex[:8]}"


def _item(item_id: str, text: str = "a red apple", dim: int = 4) -> NewItem:
    return NewItem(item_id, item_id.title(), text, {"genres": ["Fruit"]},
                   np.arange(dim, dtype=np.float32) / dim, "tiny-encoder")


def test_events_are_kept_in_time_order(store_uri):
    with open_event_store(store_uri) as s:
        assert s.append([Event("u1", "a", 10), Event("u1", "b", 30), Event("u2", "x", 5)]).new == 3
        assert s.append([{"user_id": "u1", "item_id": "c", "timestamp": 20, "type": "click"}]).new == 1
        assert s.append([Event("u1", "d", 30), Event("u1", "e", 30)]).new == 2
        assert s.history("u1") == ["a", "c", "b", "d", "e"]
        assert s.history("u1", limit=2) == ["d", "e"]
        assert s.history("u1", limit=0) == [] and s.history("nobody") == []
        assert s.count() == 6
        # An item id with the separator characters survives as it is.
        assert s.append([Event("u3", "a|b|c", 1)]).new == 1 and s.history("u3") == ["a|b|c"]
        # ... and so does a type with them (stored, read back with each event).
        assert s.append([{"user_id": "u4", "item_id": "x|y", "timestamp": 2, "type": "a|b%7C"}]).new == 1
        assert [(e.item_id, e.timestamp, e.type) for e in s.events("u4")] == [("x|y", 2, "a|b%7C")]
        assert [e.type for e in s.events("u1")] == ["view", "click", "view", "view", "view"]
    with open_event_store(store_uri) as again:  # a new store object (another replica) reads the same
        assert again.history("u1") == ["a", "c", "b", "d", "e"]


def test_a_bad_event_stores_none_of_its_batch(store_uri):
    with open_event_store(store_uri) as s:
        with pytest.raises(ValueError):
            s.append([Event("u1", "a", 1), {"user_id": "u1", "item_id": 7}])
        with pytest.raises(ValueError):
            s.append([Event("u1", "a", 1), Event("u1", "", 2)])
        assert s.history("u1") == []


def test_new_items_and_sync_state(store_uri):
    with open_event_store(store_uri) as s:
        assert s.sync_state() == (0, 0)
        assert s.add_items([_item("n1"), _item("n2", "a blue car")]) == 2
        assert s.sync_state() == (2, 0)
        got = s.items_since(0)
        assert [(q, it.item_id) for q, it in got] == [(1, "n1"), (2, "n2")]
        assert got[1][1].text == "a blue car" and got[1][1].attributes == {"genres": ["Fruit"]}
        np.testing.assert_allclose(got[0][1].embedding, np.arange(4) / 4)
        # Re-adding an id replaces it and moves it to the end of the sequence.
        assert s.add_items([_item("n1", "a green apple")]) == 3
        assert [(q, it.item_id, it.text) for q, it in s.items_since(2)] == [(3, "n1", "a green apple")]
        assert [it.item_id for _, it in s.items_since(0)] == ["n2", "n1"]
        with pytest.raises(ValueError):
            s.add_items([_item("n4"), _item("n4")])
        assert s.sync_state() == (3, 0)
        assert s.request_reload() == 1 and s.request_reload() == 2
        assert s.sync_state() == (3, 2)
    with open_event_store(store_uri) as again:
        assert again.sync_state() == (3, 2)
        assert [it.item_id for _, it in again.items_since(0)] == ["n2", "n1"]


def test_redis_keeps_acknowledged_writes_across_a_server_restart(redis_server):
    uri = redis_server.url() + "?prefix=restart"
    with open_event_store(uri) as s:
        assert isinstance(s, RedisEventStore) and s.durable is True
        s.append([Event("u1", "a", 1), Event("u1", "b", 2, event_id="restart-b")])
        s.add_items([_item("n1")])
    redis_server.restart()
    with open_event_store(uri) as s:
        assert s.history("u1") == ["a", "b"]
        assert [it.item_id for _, it in s.items_since(0)] == ["n1"]
        # The event ids are durable too: a retry after the restart stores nothing again.
        assert s.append([Event("u1", "b", 2, event_id="restart-b")]) == AppendResult(1, 0)
        assert s.history("u1") == ["a", "b"]


def test_redis_password_from_the_environment(redis_server, monkeypatch):
    bare = redis_server.url(with_password=False)
    monkeypatch.delenv("DISTILREC_REDIS_PASSWORD", raising=False)
    with pytest.raises(EventStoreError) as err:
        open_event_store(bare)
    assert redis_server.password not in str(err.value)
    monkeypatch.setenv("DISTILREC_REDIS_PASSWORD", redis_server.password)
    with open_event_store(bare + "?prefix=envpw") as s:
        s.ping()
        assert redis_server.password not in repr(s)
    assert redis_server.password not in redact(redis_server.url())


def test_stored_events_carry_sequence_and_commit_time(store_uri):
    import time

    with open_event_store(store_uri) as s:
        t0 = time.time()
        s.append([Event("u", "a", 5), Event("u", "b", 3)])
        ev = s.events("u")
        assert [e.item_id for e in ev] == ["b", "a"] and [e.timestamp for e in ev] == [3, 5]
        assert ev[0].seq > ev[1].seq  # b arrived second
        assert all(t0 - 1 <= e.committed <= time.time() + 1 for e in ev)


# ---------------------------------------------------------------------------------------- event ids

def test_a_retry_with_the_same_event_ids_stores_nothing_new(store_uri):
    batch = [Event("u1", "a", 1, event_id="e1"), Event("u1", "b", 2, event_id="e2")]
    with open_event_store(store_uri) as s:
        assert s.append(batch) == AppendResult(accepted=2, new=2)
        assert s.append(batch) == AppendResult(accepted=2, new=0)
        assert s.append(batch).duplicates == 2
        assert s.history("u1") == ["a", "b"] and s.count() == 2
    with open_event_store(store_uri) as again:  # another replica knows the ids as well
        assert again.append(list(reversed(batch))) == AppendResult(2, 0)
        assert again.history("u1") == ["a", "b"]


def test_a_mixed_batch_stores_only_the_new_events(store_uri):
    with open_event_store(store_uri) as s:
        assert s.append([Event("u1", "a", 1, event_id="e1"), Event("u1", "b", 2)]) == AppendResult(2, 2)
        # e1 is known; e3 is new; an event without an id is stored every time it is sent.
        got = s.append([Event("u1", "a", 1, event_id="e1"), Event("u1", "c", 3, event_id="e3"),
                        Event("u1", "b", 2), {"user_id": "u1", "item_id": "d", "timestamp": 4, "event_id": None}])
        assert got == AppendResult(accepted=4, new=3)
        assert s.history("u1") == ["a", "b", "b", "c", "d"]
        # The mapping form takes event_id too.
        assert s.append([{"user_id": "u1", "item_id": "c", "timestamp": 3, "type": "click", "event_id": "e3"}]) \
            == AppendResult(1, 0)


def test_event_ids_are_store_wide_not_per_user(store_uri):
    with open_event_store(store_uri) as s:
        assert s.append([Event("u1", "a", 1, event_id="shared")]) == AppendResult(1, 1)
        # The id is the event's name: another user's event (other fields are not compared) is not stored.
        assert s.append([Event("u2", "x", 9, type="click", event_id="shared")]) == AppendResult(1, 0)
        assert s.history("u2") == [] and s.history("u1") == ["a"]
        assert s.append([Event("u2", "x", 9, event_id="other")]) == AppendResult(1, 1)


def test_the_same_event_id_twice_in_one_batch_is_stored_once(store_uri):
    with open_event_store(store_uri) as s:
        got = s.append([Event("u1", "first", 1, event_id="e"), Event("u1", "x", 2),
                        Event("u2", "second", 3, event_id="e")])
        assert got == AppendResult(accepted=3, new=2)
        assert s.history("u1") == ["first", "x"] and s.history("u2") == []  # the first one is kept


@pytest.mark.parametrize("bad, match", [
    ("", "1 to 128 characters"),
    ("x" * 129, "1 to 128 characters"),
    ("a\x00b", "without NUL"),
    (17, "event_id must be a string"),
])
def test_an_invalid_event_id_stores_none_of_its_batch(store_uri, bad, match):
    with open_event_store(store_uri) as s:
        with pytest.raises(ValueError, match=match):
            s.append([Event("u1", "a", 1, event_id="ok"), Event("u1", "b", 2, event_id=bad)])
        with pytest.raises(ValueError, match=match):
            s.append([Event("u1", "a", 1), {"user_id": "u1", "item_id": "b", "event_id": bad}])
        assert s.history("u1") == []
        # Nothing of the refused batch was kept, its ids included.
        assert s.append([Event("u1", "a", 1, event_id="ok")]) == AppendResult(1, 1)
        # The limits themselves are fine, and an id is any text.
        assert s.append([Event("u1", "b", 2, event_id="y" * 128), Event("u1", "c", 3, event_id="é|:*?")]) \
            == AppendResult(2, 2)


def test_a_batch_refused_by_the_store_keeps_none_of_its_ids(store_uri):
    with open_event_store(store_uri) as s:
        with pytest.raises(ValueError):  # refused by the schema (SQLite) or the store's checks (Redis)
            s.append([Event("u1", "a", 1, event_id="e1"), Event("u1", "", 2, event_id="e2")])
        assert s.append([Event("u1", "a", 1, event_id="e1"), Event("u1", "b", 2, event_id="e2")]) == AppendResult(2, 2)


def test_concurrent_writers_of_one_event_id_store_it_once(store_uri):
    stores = [open_event_store(store_uri) for _ in range(2)]
    results, errors = [], []
    barrier = threading.Barrier(8)

    def one(t):
        try:
            barrier.wait(timeout=10)
            results.append(stores[t % 2].append([Event(f"t{t}", "a", 1, event_id="once"),
                                                 Event(f"t{t}", "b", 2, event_id=f"own-{t}")]))
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sum(r.new for r in results) == 1 + 8 and all(r.accepted == 2 for r in results)
    assert stores[0].count() == 9
    for s in stores:
        s.close()


def test_redis_event_ids_expire_after_their_lifetime(redis_server):
    uri = redis_server.url() + f"?prefix=ttl{uuid.uuid4().hex[:6]}"
    with open_event_store(uri) as s:
        assert s.event_id_ttl_s == 7 * 24 * 3600
        s.append([Event("u", "a", 1, event_id="e1")])
        assert 7 * 24 * 3600 - 60 < s.r.ttl(s._k("eid", "e1")) <= 7 * 24 * 3600
        assert s.r.ttl(s._k("ev", "u")) == -1  # the events themselves are kept
    with open_event_store(uri + "&id_ttl=1") as s:
        assert s.append([Event("u", "b", 2, event_id="e2")]) == AppendResult(1, 1)
        assert s.append([Event("u", "b", 2, event_id="e2")]) == AppendResult(1, 0)
        time.sleep(1.2)
        # Past its lifetime the id is forgotten: the same event is stored again.
        assert s.append([Event("u", "b", 2, event_id="e2")]) == AppendResult(1, 1)
        assert s.history("u") == ["a", "b", "b"]


def test_redis_id_ttl_option():
    assert parse_store_uri("redis://cache:6379/0?id_ttl=3600")[2] == {"event_id_ttl_s": 3600}
    for bad in ("0", "-5", "1.5", "soon", ""):
        with pytest.raises(ValueError, match="id_ttl must be a positive whole number"):
            parse_store_uri(f"redis://cache:6379/0?id_ttl={bad}")


def _impression(rec_id: str, arm: str = "a", items=("i1", "i2", "i3"), at: float | None = None,
                user: str | None = "u1") -> Impression:
    return Impression(rec_id, arm, user, tuple(items), time.time() if at is None else at)


def test_impressions_are_looked_up_by_recommendation_id(store_uri):
    with open_event_store(store_uri) as s:
        assert s.impressions(["r1"]) == {}
        s.record_impressions([])  # nothing to write
        s.record_impressions([_impression("r1"), _impression("r2", "b", ("x|y", "z"), user=None)])
        got = s.impressions(["r2", "r1", "missing", "r1"])
        assert set(got) == {"r1", "r2"}
        assert got["r2"].arm == "b" and got["r2"].user_id is None and got["r2"].items == ("x|y", "z")
        assert got["r1"].rank("i1") == 1 and got["r1"].rank("i3") == 3 and got["r1"].rank("i9") is None
        # The same id again replaces the impression (a resent batch); an event is never involved.
        s.record_impressions([_impression("r1", "c", ("i9",))])
        assert s.impressions(["r1"])["r1"].items == ("i9",) and s.history("u1") == []
        with pytest.raises(ValueError):
            s.record_impressions([_impression("r3"), ("r4", "a")])
        with pytest.raises(ValueError):
            s.record_impressions([_impression("")])
        assert s.impressions(["r3"]) == {}  # nothing of a refused batch is kept
    with open_event_store(store_uri) as again:  # another replica finds them
        assert set(again.impressions([f"r{i}" for i in range(1000)])) == {"r1", "r2"}


def test_impressions_expire(store_uri, tmp_path):
    if store_uri.startswith("sqlite"):
        s = SQLiteEventStore(tmp_path / "ttl.db", impression_ttl_s=60)
    else:
        s = RedisEventStore(store_uri.split("?")[0], prefix=f"t{uuid.uuid4().hex[:8]}", impression_ttl_s=1)
    with s:
        s.record_impressions([_impression("fresh"), _impression("old", at=time.time() - 120)])
        if isinstance(s, RedisEventStore):
            assert 0 < s.r.ttl(s._k("imp", "fresh")) <= 1
            time.sleep(1.2)
            assert s.impressions(["fresh", "old"]) == {}
        else:  # past the lifetime by its time: not found, and gone after the next write
            assert set(s.impressions(["fresh", "old"])) == {"fresh"}
            s.record_impressions([_impression("next")])
            assert sqlite3.connect(s.path).execute("SELECT rec_id FROM impressions ORDER BY seq").fetchall() == [
                ("fresh",), ("next",)]


def test_a_shared_state_is_written_only_by_the_generation_it_read(store_uri):
    with open_event_store(store_uri) as s, open_event_store(store_uri) as other:
        assert s.read_state("canary:x") == SharedState(0, None)
        assert s.compare_and_set_state("canary:x", 0, {"weight": 0.05, "status": "running"})
        assert other.read_state("canary:x") == SharedState(1, {"weight": 0.05, "status": "running"})
        # Two replicas that read generation 1 decide: the first write wins, the second is told so.
        assert other.compare_and_set_state("canary:x", 1, {"weight": 0.15, "status": "running"})
        assert not s.compare_and_set_state("canary:x", 1, {"weight": 0.0, "status": "rolled_back"})
        assert s.read_state("canary:x") == SharedState(2, {"weight": 0.15, "status": "running"})
        assert not s.compare_and_set_state("canary:x", 5, {"weight": 1.0})  # a generation never reached
        # The same write sent again (its answer lost) is recognised by Redis; SQLite answers locally.
        if isinstance(s, RedisEventStore):
            assert s.compare_and_set_state("canary:x", 1, {"status": "running", "weight": 0.15})
        assert s.read_state("canary:other") == SharedState(0, None)  # keys are apart
        for key, gen, value in (("", 0, {}), ("k", -1, {}), ("k", True, {}), ("k", 0, [1]),
                                ("k", 0, {"x": float("nan")}), ("k" * 201, 0, {})):
            with pytest.raises(ValueError):
                s.compare_and_set_state(key, gen, value)
        assert s.read_state("k") == SharedState(0, None)
    with open_event_store(store_uri) as again:  # it outlives the store objects
        assert again.read_state("canary:x").generation == 2
