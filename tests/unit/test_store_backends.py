"""What every event store backend must do, run against SQLite and a real redis-server: events in time
order, new items with their embeddings, the sync state, and data that outlives the store object (and,
for Redis, a restart of the server)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from distilrec.stores import Event, EventStoreError, NewItem, RedisEventStore, open_event_store, redact


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
        assert s.append([Event("u1", "a", 10), Event("u1", "b", 30), Event("u2", "x", 5)]) == 3
        assert s.append([{"user_id": "u1", "item_id": "c", "timestamp": 20, "type": "click"}]) == 1
        assert s.append([Event("u1", "d", 30), Event("u1", "e", 30)]) == 2
        assert s.history("u1") == ["a", "c", "b", "d", "e"]
        assert s.history("u1", limit=2) == ["d", "e"]
        assert s.history("u1", limit=0) == [] and s.history("nobody") == []
        assert s.count() == 6
        # An item id with the separator characters survives as it is.
        assert s.append([Event("u3", "a|b|c", 1)]) == 1 and s.history("u3") == ["a|b|c"]
        # ... and so does a type with them (stored, read back with each event).
        assert s.append([{"user_id": "u4", "item_id": "x|y", "timestamp": 2, "type": "a|b%7C"}]) == 1
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
        s.append([Event("u1", "a", 1), Event("u1", "b", 2)])
        s.add_items([_item("n1")])
    redis_server.restart()
    with open_event_store(uri) as s:
        assert s.history("u1") == ["a", "b"]
        assert [it.item_id for _, it in s.items_since(0)] == ["n1"]


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
