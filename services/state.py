"""Per-replica model state with hot reload: :class:`ServingState` (shared by every deployment).

Each replica builds what it needs from the artifact (a *bundle*: the ingress's catalogue, histories and
in-process model, :class:`distilrec.serving.ServingBundle`; a Scorer deployment's model and item vectors,
:class:`distilrec.serving.ModelScorer`) and keeps it in one attribute. A new
model version is loaded and built in a background thread while the old bundle keeps serving, then
swapped in with one assignment, so

* a request reads ``state.bundle`` once and uses that bundle to the end: it never sees half of a
  version, and a swap never fails a request;
* the ingress and a Scorer deployment exchange item **ids**, never model rows, so when they are on
  different versions for the moment of a swap the answer is still valid (an id that one side does not
  know is left out; ``model_version`` is the scorer's);
* an artifact that fails to load or to build (missing files, weights that do not fit, non-finite
  scores) is refused: the old bundle stays, the reason is logged and kept in :meth:`status`
  (``GET /v1/model``), and that version is not tried again by polling (a ``POST /v1/model/reload``
  tries again).

New versions are found by polling ``model_uri`` (its ``models/LATEST``) every ``poll_s`` seconds, and
at once when the store's reload generation grows (``POST /v1/model/reload`` bumps it). New items
(``POST /v1/items``) live in the event store; the ingress passes the store's ``(items_seq,
reload_generation)`` with every call, and a replica that is behind applies the missing items to its
bundle before it answers (:meth:`sync`). A bundle built for a new version gets every stored new item
before it is swapped in.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Protocol, TypeVar

from distilrec.artifacts import Artifact, load_artifact, resolve
from distilrec.stores import EventStore, EventStoreError, NewItem
from services import metrics

log = logging.getLogger("ray.serve")


def freeze_heap(after_swap: bool = False) -> None:
    """Take every object alive now (the libraries, the model, the catalogue, the histories) out of the
    cyclic garbage collector's view (``gc.freeze``), so that its full collections, which the interpreter
    runs every so often under load, scan only what requests allocate. Why: a full collection over a
    replica's whole heap (hundreds of thousands of objects with torch, transformers and Ray imported)
    holds the GIL long enough to show in the latency of the requests in flight. ``after_swap=True`` (a
    new bundle replaced the old one) first lets the collector free the old bundle's cycles, one full
    pause per model swap instead of many.
    """
    if os.environ.get("DISTILREC_FREEZE_HEAP") != "1":  # opt-in with the fast path (services.run.local_serve_env)
        return
    if after_swap:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class Bundle(Protocol):
    version: str
    manifest: dict

    def add_items(self, items: list[NewItem]) -> None: ...


B = TypeVar("B", bound=Bundle)
# Ray (2.60) stops exporting a gauge that is not set again within two export intervals (~20 s), so the
# model gauges are set again this often, or a replica with a loaded model would look like one without.
GAUGE_REFRESH_S = 5.0


class ServingState(Generic[B]):
    """The current bundle of one replica, its reloads and its new items (see the module docstring)."""

    def __init__(self, model_uri: str, build: Callable[[Artifact], B], store: EventStore, poll_s: float = 30.0,
                 with_teacher: bool = False, with_histories: bool = True,
                 resolver: Callable[[str], str] = resolve):
        """``resolver(model_uri)``: the version folder to serve now (default: what ``models/LATEST``
        names, or ``model_uri`` itself when it is a version's folder); asked at start and at every poll."""
        self.model_uri, self.build, self.store, self.resolve = model_uri, build, store, resolver
        self.poll_s, self.with_teacher, self.with_histories = float(poll_s), with_teacher, with_histories
        self._lock = threading.RLock()
        self._loading = threading.Lock()
        self.refused: dict[str, str] = {}
        self.last_error: dict[str, Any] | None = None
        self.reloaded_at: str | None = None
        self.m_info, self.m_created, self.m_reloads = metrics.model_info(), metrics.model_created(), metrics.model_reloads()
        uri = self.resolve(model_uri)
        self.bundle: B = build(self._load(uri))
        self.uri = uri
        self.items_seq = 0
        self.reload_gen = 0
        try:
            self.items_seq, self.reload_gen = store.sync_state()
            self._apply(self.bundle, store.items_since(0))
        except EventStoreError as e:  # serve the trained catalogue; the next sync tries again
            self.items_seq = 0
            log.warning("new items not loaded yet: %s", e)
        self._export(None)
        self._stop = threading.Event()
        threading.Thread(target=self._keep_exported, name="model-gauges", daemon=True).start()
        if self.poll_s > 0:
            threading.Thread(target=self._poll, name="model-poll", daemon=True).start()
        freeze_heap()

    def _load(self, uri: str) -> Artifact:
        return load_artifact(uri, with_teacher=self.with_teacher, with_histories=self.with_histories)

    # ------------------------------------------------------------------------------ new items

    @staticmethod
    def _apply(bundle: B, items: list[tuple[int, NewItem]]) -> int:
        if items:
            bundle.add_items([it for _, it in items])
        return max((q for q, _ in items), default=0)

    def sync(self, state: tuple[int, int] | list[int] | None) -> None:
        """Catch up with the store's ``(items_seq, reload_generation)`` (read here when ``None``)."""
        try:
            items_seq, gen = state if state is not None else self.store.sync_state()
            if items_seq > self.items_seq:
                with self._lock:
                    if items_seq > self.items_seq:
                        got = self.store.items_since(self.items_seq)
                        self.items_seq = max(self._apply(self.bundle, got), items_seq)
        except EventStoreError as e:
            log.warning("could not read new items from the store: %s", e)
            return
        if gen > self.reload_gen:
            self.reload_gen = gen
            threading.Thread(target=self.check, kwargs={"force": True}, daemon=True).start()

    # ---------------------------------------------------------------------------------- reload

    def _keep_exported(self) -> None:
        while not self._stop.wait(GAUGE_REFRESH_S):
            try:
                self._export(None)
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                log.exception("model gauges not exported")

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("model poll failed")

    def check(self, force: bool = False) -> bool:
        """Load the version ``model_uri`` resolves to when it is not the current one; returns whether
        a new bundle was swapped in. One load at a time per replica."""
        with self._loading:
            try:
                target = self.resolve(self.model_uri)
            except Exception as e:  # noqa: BLE001 - a missing LATEST is a refusal, not a crash
                self._refuse(str(self.model_uri), f"{type(e).__name__}: {e}")
                return False
            if target == self.uri or (target in self.refused and not force):
                return False
            t0 = time.perf_counter()
            try:
                bundle = self.build(self._load(target))
                items = self.store.items_since(0)
            except Exception as e:  # noqa: BLE001 - any failure refuses the artifact
                self._refuse(target, f"{type(e).__name__}: {e}")
                return False
            with self._lock:
                self._apply(bundle, items)
                newer = self.store.items_since(max((q for q, _ in items), default=0)) if items else []
                self._apply(bundle, newer)
                old = self.bundle
                self.bundle, self.uri = bundle, target  # the swap: one assignment
                self.items_seq = max([self.items_seq] + [q for q, _ in items + newer])
            self.refused.pop(target, None)
            self.reloaded_at = datetime.now(timezone.utc).isoformat()
            self.m_reloads.inc(tags={"result": "ok"})
            self._export(old)
            log.info("model %s swapped in for %s (%.1f s)", bundle.version, old.version, time.perf_counter() - t0)
            del old, bundle
            freeze_heap(after_swap=True)
            return True

    def _refuse(self, target: str, reason: str) -> None:
        first = target not in self.refused
        self.refused[target] = reason
        self.last_error = {"uri": target, "reason": reason, "at": datetime.now(timezone.utc).isoformat()}
        self.m_reloads.inc(tags={"result": "refused"})
        (log.error if first else log.warning)("model artifact %s refused, still serving %s: %s",
                                              target, self.bundle.version, reason)

    def _export(self, old: B | None) -> None:
        if old is not None and old.version != self.bundle.version:
            self.m_info.set(0, tags={"version": old.version})
        self.m_info.set(1, tags={"version": self.bundle.version})
        created = self.bundle.manifest.get("created_at")
        try:
            self.m_created.set(datetime.fromisoformat(created).timestamp())
        except (TypeError, ValueError):
            pass

    def status(self) -> dict:
        m = self.bundle.manifest
        return {"version": m["version"], "created_at": m.get("created_at"), "uri": self.uri,
                "dataset": m.get("dataset"), "metrics": m.get("metrics"), "n_items": m.get("n_items"),
                "gate": m.get("gate"),
                "reloaded_at": self.reloaded_at, "last_reload_error": self.last_error,
                "refused": [{"uri": u, "reason": r} for u, r in self.refused.items()]}

    def close(self) -> None:
        self._stop.set()


def close_replica(replica: object) -> None:
    """Stop a replica's ``state`` threads and close its ``store`` (``__del__`` of the deployments that
    hold both); attributes that were never set (a failed ``__init__``) are skipped."""
    state = getattr(replica, "state", None)
    if state is not None:
        state.close()
    store = getattr(replica, "store", None)
    if store is not None:
        store.close()
