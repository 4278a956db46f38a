"""The Redis event store when a write's answer goes missing, against a real redis-server behind a TCP
proxy that can hold back or cut what passes through it. Redis applies a ``MULTI … EXEC`` it has
received whether or not its answer comes back, so the store looks before it answers: applied is a
success, not applied is "nothing stored", and no answer to the look either is an unknown outcome, never
"nothing stored"."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from distilrec.stores import AppendResult, Event, EventStoreError, open_event_store

TIMEOUT_S = 0.3  # the store's timeout per try; each test holds answers back for several times that


class Proxy:
    """``127.0.0.1:port`` → the Redis server. ``mode``: ``"pass"``; ``"late_exec"``: the answer to a
    packet holding ``EXEC`` is held back ``hold_s`` (on that connection only); ``"stall"``: once an
    ``EXEC`` has passed, every answer on every connection is held back until ``hold_s`` after it;
    ``"drop_exec"``: a packet holding ``EXEC`` is not sent on, and its connection is closed."""

    def __init__(self, target_port: int):
        self.target_port, self.mode, self.hold_s = target_port, "pass", 0.0
        self.stalled_until = 0.0
        self.exec_seen = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, password: str) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/0?prefix=late{uuid.uuid4().hex[:6]}&timeout={TIMEOUT_S}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            held = {"until": 0.0}
            threading.Thread(target=self._up, args=(client, server, held), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, held), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, held: dict) -> None:
        try:
            while data := client.recv(65536):
                if b"EXEC" in data:
                    self.exec_seen += 1
                    if self.mode == "drop_exec":
                        break
                    if self.mode == "late_exec":
                        held["until"] = time.monotonic() + self.hold_s
                    if self.mode == "stall":
                        self.stalled_until = time.monotonic() + self.hold_s
                server.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            s.close()

    def _down(self, server: socket.socket, client: socket.socket, held: dict) -> None:
        try:
            while data := server.recv(65536):
                wait = max(held["until"], self.stalled_until) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                client.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            s.close()

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def proxy(redis_server):
    p = Proxy(redis_server.port)
    yield p
    p.close()


def test_a_write_applied_but_answered_late_is_a_success(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        proxy.mode, proxy.hold_s = "late_exec", 4 * TIMEOUT_S
        assert s.append([Event("u", "a", 1), Event("u", "b", 2)]) == AppendResult(2, 2)  # the look found it
        assert proxy.exec_seen == 2  # sent, then sent once more; not ten times
        proxy.mode = "pass"
        assert s.history("u") == ["a", "b"]  # once: the resend wrote the same members


def test_a_write_that_never_reached_redis_is_nothing_stored(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        proxy.mode = "drop_exec"
        with pytest.raises(EventStoreError, match="nothing stored") as err:
            s.append([Event("u", "a", 1)])
        assert not err.value.outcome_unknown
        proxy.mode = "pass"
        assert s.history("u") == []


def test_no_answer_to_the_write_nor_to_the_look_is_an_unknown_outcome(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        proxy.mode, proxy.hold_s = "stall", 10 * TIMEOUT_S
        t0 = time.monotonic()
        with pytest.raises(EventStoreError, match="may have been applied") as err:
            s.append([Event("u", "a", 1)])
        took = time.monotonic() - t0
        assert err.value.outcome_unknown and "nothing stored" not in str(err.value)
        assert took < 8 * TIMEOUT_S, f"{took:.1f} s: more tries than one resend and one look"
        time.sleep(max(0.0, proxy.stalled_until - time.monotonic()) + 0.1)
        proxy.mode = "pass"
        assert s.history("u") == ["a"]  # it had been applied: hence "may", never "nothing stored"


# With event ids: the look tells this batch's writes from earlier ones, and a retry is safe.

def test_a_write_with_ids_answered_late_counts_its_new_events(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        assert s.append([Event("u", "a", 1, event_id="e1")]) == AppendResult(1, 1)
        proxy.mode, proxy.hold_s, sent = "late_exec", 4 * TIMEOUT_S, proxy.exec_seen
        # e1 was stored before, e2 by this call (sent twice, then found by the look).
        got = s.append([Event("u", "a", 1, event_id="e1"), Event("u", "b", 2, event_id="e2"), Event("u", "c", 3)])
        assert got == AppendResult(accepted=3, new=2)
        assert proxy.exec_seen - sent == 2
        proxy.mode = "pass"
        assert s.history("u") == ["a", "b", "c"]


def test_a_late_write_of_known_ids_only_is_a_success_with_nothing_new(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        assert s.append([Event("u", "a", 1, event_id="e1")]) == AppendResult(1, 1)
        proxy.mode, proxy.hold_s, sent = "late_exec", 4 * TIMEOUT_S, proxy.exec_seen
        # Whether or not the script ran, every event is stored: there is nothing to refuse.
        assert s.append([Event("u", "a", 1, event_id="e1")]) == AppendResult(1, 0)
        assert proxy.exec_seen - sent == 2
        proxy.mode = "pass"
        assert s.history("u") == ["a"]


def test_a_lost_write_with_a_known_id_and_a_new_one_is_nothing_stored(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        assert s.append([Event("u", "a", 1, event_id="e1")]) == AppendResult(1, 1)
        proxy.mode = "drop_exec"
        with pytest.raises(EventStoreError, match="nothing stored") as err:
            s.append([Event("u", "a", 1, event_id="e1"), Event("u", "b", 2, event_id="e2")])
        assert not err.value.outcome_unknown
        proxy.mode = "pass"
        assert s.history("u") == ["a"]
        assert s.append([Event("u", "a", 1, event_id="e1"), Event("u", "b", 2, event_id="e2")]) == AppendResult(2, 1)


def test_after_an_unknown_outcome_a_retry_with_the_same_ids_stores_nothing_twice(proxy, redis_server):
    batch = [Event("u", "a", 1, event_id="e1"), Event("v", "b", 2, event_id="e2")]
    with open_event_store(proxy.url(redis_server.password)) as s:
        proxy.mode, proxy.hold_s = "stall", 10 * TIMEOUT_S
        with pytest.raises(EventStoreError, match="may have been applied") as err:
            s.append(batch)
        assert err.value.outcome_unknown and "stores none of them twice" in str(err.value)
        time.sleep(max(0.0, proxy.stalled_until - time.monotonic()) + 0.1)
        proxy.mode = "pass"
        assert s.append(batch) == AppendResult(accepted=2, new=0)  # it had been applied: the retry adds nothing
        assert s.history("u") == ["a"] and s.history("v") == ["b"]


def test_an_unknown_outcome_says_events_without_ids_may_be_stored_twice(proxy, redis_server):
    with open_event_store(proxy.url(redis_server.password)) as s:
        proxy.mode, proxy.hold_s = "stall", 10 * TIMEOUT_S
        with pytest.raises(EventStoreError, match="events without an event_id twice") as err:
            s.append([Event("u", "a", 1, event_id="e1"), Event("u", "b", 2)])
        assert err.value.outcome_unknown
        time.sleep(max(0.0, proxy.stalled_until - time.monotonic()) + 0.1)
