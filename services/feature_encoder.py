"""FeatureEncoder deployment: a user id and request history → the model's input rows; and the writer of
the event store (``POST /v1/events``).

A user's rows are, in time order: the history from the artifact's interaction log, then the user's
events from the event store (the most recent ``STORED_HISTORY_LIMIT``), then the request's
``history``. Unknown request item ids are reported back, never silently dropped; stored events whose
item left the catalogue (a newer model) are skipped. Every replica opens the same store URI, so an
event committed through one replica is read by the next request on any of them.
"""

from __future__ import annotations

import logging

from ray import serve

from distilrec.artifacts import load_artifact
from distilrec.stores import EventStoreError, open_event_store
from services import metrics

log = logging.getLogger("ray.serve")

# Stored events read per request: the model uses the last ``max_len`` of the history, but every item
# read here is also dropped from the results as already seen.
STORED_HISTORY_LIMIT = 1000


@serve.deployment
class FeatureEncoder:
    def __init__(self, model_uri: str, event_store: str):
        art = load_artifact(model_uri)
        self.version = art.version
        self.index = art.items.index
        self.histories = {u: [self.index[i] for i in items if i in self.index] for u, items in art.histories.items()}
        self.store = open_event_store(event_store)
        self.events_stored = metrics.events_stored_total()

    def encode(self, user_id: str | None, history: list[str] | None, exclude: list[str] | None = None) -> dict:
        """``{"rows": [...] (time order), "known_user": bool, "unknown_items": [...], "store_ok": bool,
        "exclude_rows": [...]}``; ``exclude_rows`` are the rows of the known ``exclude`` ids (unknown
        ones can never be recommended, so they are ignored).

        ``store_ok`` is false when the event store could not be read: the rows then lack the user's
        posted events, and the caller reports the answer as degraded."""
        rows = list(self.histories.get(user_id, [])) if user_id is not None else []
        known_user = user_id is not None and user_id in self.histories
        store_ok = True
        if user_id is not None:
            try:
                stored = self.store.history(user_id, STORED_HISTORY_LIMIT)
            except EventStoreError as e:
                log.warning("event store read failed; answering without stored events: %s", e)
                stored, store_ok = [], False
            rows.extend(self.index[i] for i in stored if i in self.index)
            known_user = known_user or bool(stored)
        unknown = []
        for item in history or []:
            row = self.index.get(item)
            if row is None:
                unknown.append(item)
            else:
                rows.append(row)
        exclude_rows, _ = self.item_rows(exclude or [])
        return {"rows": rows, "known_user": known_user, "unknown_items": unknown, "store_ok": store_ok,
                "exclude_rows": exclude_rows}

    def item_rows(self, item_ids: list[str]) -> tuple[list[int], list[str]]:
        """Rows of the known ids, and the ids that are not in the catalogue."""
        rows = [self.index[i] for i in item_ids if i in self.index]
        return rows, [i for i in item_ids if i not in self.index]

    def append_events(self, events: list[dict]) -> dict:
        """Store a batch of events (``{"user_id", "item_id", "timestamp", "type"}``), all or nothing.

        Returns ``{"stored": n}`` once the batch is committed; ``{"stored": 0, "unknown_items": [...]}``
        when an item id is not in the catalogue, and ``{"stored": 0, "error": code, "message": ...}`` when
        the store refused the batch (``event_store_unavailable``) or an event (``invalid_request``); in
        those cases nothing is stored."""
        _, unknown = self.item_rows([e["item_id"] for e in events])
        if unknown:
            return {"stored": 0, "unknown_items": list(dict.fromkeys(unknown))}
        try:
            n = self.store.append(events)
        except EventStoreError as e:
            log.warning("event store write failed: %s", e)
            return {"stored": 0, "error": "event_store_unavailable", "message": "the event store did not accept "
                    "the write; nothing was stored, retry later"}
        except ValueError as e:
            return {"stored": 0, "error": "invalid_request", "message": str(e)}
        if n:
            self.events_stored.inc(n)
        return {"stored": n}

    def ping_store(self) -> bool:
        """Raises when the event store cannot be read (used by ``/readyz``)."""
        self.store.ping()
        return True

    def __del__(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
