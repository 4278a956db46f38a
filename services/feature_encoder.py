"""FeatureEncoder deployment: a user id and request history → the model's input; item text → text
embedding (``POST /v1/items``); and the writer of the event store (``POST /v1/events``).

A user's history is, in time order: the history from the artifact's interaction log, then the user's
events from the event store (the most recent ``STORED_HISTORY_LIMIT``), then the request's
``history``. Unknown request item ids are reported back, never silently dropped; stored events whose
item left the catalogue (a newer model) are skipped. Every replica opens the same store URI, so an
event committed through one replica is read by the next request on any of them.

The encoder also reads the store's sync state ``(items_seq, reload_generation)`` once per request
and hands it to the ingress, which passes it to the scorer and ranker (see :mod:`services.state`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ray import serve

from distilrec.artifacts import Artifact
from distilrec.catalog import compose_text, parse_attributes
from distilrec.stores import EventStoreError, NewItem, open_event_store
from services import metrics
from services.state import ServingState

log = logging.getLogger("ray.serve")

# Stored events read per request: the model uses the last ``max_len`` of the history, but every item
# read here is also dropped from the results as already seen.
STORED_HISTORY_LIMIT = 1000
SEEN_USERS = 100_000  # users whose last reflected event this replica remembers (event-to-effect metric)


@dataclass
class EncoderBundle:
    version: str
    manifest: dict
    index: set[str]
    trained: set[str]
    attribute_names: set[str]
    histories: dict[str, list[str]]
    times: dict[str, list[int]]
    encoder_uri: str | None
    text_dim: int
    _text_encoder: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, art: Artifact) -> "EncoderBundle":
        index = set(art.items.item_ids)
        hist, times = {}, {}
        for u, items in art.histories.items():
            ts = (art.history_times or {}).get(u) or [0] * len(items)
            kept = [(i, t) for i, t in zip(items, ts) if i in index]
            hist[u], times[u] = [i for i, _ in kept], [t for _, t in kept]
        names = {n for a in art.items.attributes for n in a}
        return cls(art.version, art.manifest, set(index), set(index), names, hist, times, art.encoder_uri,
                   int(art.items.text_emb.shape[1]) if art.items.text_emb.ndim == 2 else 0)

    def add_items(self, items: list[NewItem]) -> None:
        for it in items:
            self.index.add(it.item_id)
            self.attribute_names.update(it.attributes)

    def text_encoder(self):
        """The artifact's text encoder, loaded on first use (``POST /v1/items``)."""
        with self._lock:
            if self._text_encoder is None:
                if not self.encoder_uri:
                    raise LookupError("the loaded model has no text encoder")
                self._text_encoder = load_text_encoder(self.encoder_uri)
            return self._text_encoder


def _refusal(what: str, e: EventStoreError, on_retry: str) -> str:
    """The client's message for a write the store refused: whether anything was stored."""
    if e.outcome_unknown:
        return f"the event store did not confirm {what} in time; they may have been stored ({on_retry})"
    return f"the event store did not accept {what}; nothing was stored, retry later"


def load_text_encoder(uri: str):
    """The artifact's text encoder (``distilrec.text.TextEncoder``) from a local folder, or from an
    fsspec URI (``s3://…/encoder``) through a temporary copy that is removed once the weights are in
    memory: each model version loads its own, and copies kept in the pod's ``/tmp`` (a size-limited
    emptyDir in the chart) would pile up with every version until the kubelet evicts the pod."""
    from distilrec.text import TextEncoder

    if "://" not in uri:
        return TextEncoder(uri)
    import tempfile

    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    with tempfile.TemporaryDirectory(prefix="distilrec-encoder-") as local:
        fs.get(path.rstrip("/") + "/", local, recursive=True)
        return TextEncoder(local)


@serve.deployment
class FeatureEncoder:
    def __init__(self, model_uri: str, event_store: str, model_poll_s: float = 30.0):
        self.store = open_event_store(event_store)
        self.state = ServingState(model_uri, EncoderBundle.build, self.store, model_poll_s)
        self.events_stored = metrics.events_stored_total()
        self.items_added = metrics.items_added_total()
        self.store_errors = metrics.event_store_errors()
        self.effect = metrics.event_to_effect()
        self.started = time.time()
        self.reflected: OrderedDict[str, int] = OrderedDict()  # user -> last event seq reflected here

    def _observe_effect(self, user_id: str, stored) -> None:
        """``distilrec_event_to_effect_seconds`` for events no earlier recommendation here reflected."""
        if not stored:
            return
        last = self.reflected.get(user_id, 0)
        fresh = [e for e in stored if e.seq > last and e.committed >= self.started]
        if fresh:
            self.effect.observe(max(0.0, time.time() - min(e.committed for e in fresh)))
        self.reflected[user_id] = max(last, max(e.seq for e in stored))
        self.reflected.move_to_end(user_id)
        while len(self.reflected) > SEEN_USERS:
            self.reflected.popitem(last=False)

    def encode(self, user_id: str | None, history: list[str] | None, filters: dict | None = None) -> dict:
        """``{"items": [ids, time order], "timestamps": [unix s, aligned; request items get now],
        "known_user": bool, "unknown_items": [...], "unknown_filters": [...], "store_ok": bool,
        "sync": [items_seq, reload_gen] | None}``.

        ``store_ok`` is false when the event store could not be read: the history then lacks the user's
        posted events, and the caller reports the answer as degraded."""
        store_ok, sync = True, None
        try:
            sync = list(self.store.sync_state())
            self.state.sync(sync)
        except EventStoreError as e:
            log.warning("event store sync read failed: %s", e)
            self.store_errors.inc(tags={"op": "read"})
            store_ok = False
        b = self.state.bundle
        items = list(b.histories.get(user_id, [])) if user_id is not None else []
        times = list(b.times.get(user_id, [])) if user_id is not None else []
        known_user = user_id is not None and user_id in b.histories
        if user_id is not None and store_ok:
            try:
                stored = self.store.events(user_id, STORED_HISTORY_LIMIT)
            except EventStoreError as e:
                log.warning("event store read failed; answering without stored events: %s", e)
                self.store_errors.inc(tags={"op": "read"})
                stored, store_ok = [], False
            kept = [e for e in stored if e.item_id in b.index]
            items += [e.item_id for e in kept]
            times += [e.timestamp for e in kept]
            known_user = known_user or bool(stored)
            self._observe_effect(user_id, stored)
        now = int(time.time())
        unknown = []
        for item in history or []:
            if item in b.index:
                items.append(item)
                times.append(now)
            else:
                unknown.append(item)
        unknown_filters = sorted(set(filters or {}) - b.attribute_names)
        return {"items": items, "timestamps": times, "known_user": known_user, "unknown_items": unknown,
                "unknown_filters": unknown_filters, "store_ok": store_ok, "sync": sync,
                "attribute_names": sorted(b.attribute_names) if unknown_filters else None}

    def append_events(self, events: list[dict]) -> dict:
        """Store a batch of events (``{"user_id", "item_id", "timestamp", "type"}``), all or nothing.

        Returns ``{"stored": n}`` once the batch is committed; ``{"stored": 0, "unknown_items": [...]}``
        when an item id is not in the catalogue (trained or added), and ``{"stored": 0, "error": code,
        "message": ...}`` when the store refused the batch (``event_store_unavailable``) or an event
        (``invalid_request``); in those cases nothing is stored, except where a remote store's answer
        went missing (``EventStoreError.outcome_unknown``: the message says the batch may be stored)."""
        self.state.sync(None)
        b = self.state.bundle
        unknown = [e["item_id"] for e in events if e["item_id"] not in b.index]
        if unknown:
            return {"stored": 0, "unknown_items": list(dict.fromkeys(unknown))}
        try:
            n = self.store.append(events)
        except EventStoreError as e:
            log.warning("event store write failed: %s", e)
            self.store_errors.inc(tags={"op": "write"})
            return {"stored": 0, "error": "event_store_unavailable",
                    "message": _refusal("the events", e, "a retry may store them twice")}
        except ValueError as e:
            return {"stored": 0, "error": "invalid_request", "message": str(e)}
        if n:
            self.events_stored.inc(n)
        return {"stored": n}

    def add_items(self, items: list[dict]) -> dict:
        """Encode and store new items (``{"item_id", "title", "text", "attributes"}``), all or nothing.

        ``{"added": n, "items_seq": seq}``, or ``{"added": 0, "error": code, "message"}`` with code
        ``item_exists`` (a trained item: its vector is learnt, its text cannot replace it),
        ``text_features_unavailable`` (the model has no text encoder), ``invalid_request`` (a value the
        store refuses) or ``event_store_unavailable``."""
        b = self.state.bundle
        trained = [it["item_id"] for it in items if it["item_id"] in b.trained]
        if trained:
            shown = ", ".join(repr(i) for i in trained[:5])
            return {"added": 0, "error": "item_exists", "message": f"trained catalogue items cannot be replaced: {shown}"}
        if not b.text_dim:
            return {"added": 0, "error": "text_features_unavailable",
                    "message": "the loaded model was trained without text features; new items need them"}
        texts = [compose_text(it["title"], it.get("text"), it.get("attributes") or {}) for it in items]
        try:
            emb = b.text_encoder().encode(texts)
        except Exception as e:  # noqa: BLE001 - a missing or broken encoder is a clear refusal
            log.error("text encoder unavailable: %s", e)
            return {"added": 0, "error": "text_features_unavailable",
                    "message": "the model's text encoder could not be loaded; see the service logs"}
        if emb.shape[1] != b.text_dim:
            return {"added": 0, "error": "text_features_unavailable",
                    "message": f"the text encoder gives {emb.shape[1]} dimensions, the model reads {b.text_dim}"}
        name = str((b.manifest.get("encoder") or {}).get("name_or_path"))
        # Attributes given, or read from the text as for trained items ("title. genres: a, b").
        new = [NewItem(it["item_id"], it["title"], text,
                       dict(it.get("attributes") or parse_attributes(it["title"], it.get("text") or "")), e, name)
               for it, text, e in zip(items, texts, emb)]
        try:
            seq = self.store.add_items(new)
        except EventStoreError as e:
            log.warning("event store write (items) failed: %s", e)
            self.store_errors.inc(tags={"op": "write"})
            return {"added": 0, "error": "event_store_unavailable",
                    "message": _refusal("the items", e, "a retry replaces them")}
        except ValueError as e:  # the store refused a value (nothing stored)
            return {"added": 0, "error": "invalid_request", "message": str(e)}
        self.items_added.inc(len(new))
        self.state.sync(None)
        return {"added": len(new), "items_seq": seq}

    def request_reload(self) -> int:
        """Bump the store's reload generation: every replica checks for a new model version."""
        return self.store.request_reload()

    def ping_store(self) -> bool:
        """Raises when the event store cannot be read (used by ``/readyz``)."""
        self.store.ping()
        return True

    def __del__(self):
        state = getattr(self, "state", None)
        if state is not None:
            state.close()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
