"""TextEncoder deployment: the artifact's ``transformers`` text encoder, text → embedding.

The ingress calls :meth:`TextEncoder.encode` for new items' text (``POST /v1/items``) and for a
request's free-text ``query``, naming the encoder of the model version it serves (``encoder_uri``), so
both sides agree on the embedding space during a model swap. A replica keeps the encoders of the last
``KEEP_ENCODERS`` versions it was asked for, and loads the current version's when it starts. This is the
only deployment that holds the text model.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
from ray import serve

from distilrec.artifacts import encoder_location, read_manifest, resolve

log = logging.getLogger("ray.serve")
KEEP_ENCODERS = 2
MAX_TEXTS = 256  # texts per call: 100 new items or one query fit


def load_text_encoder(uri: str):
    """The text encoder (``distilrec.text.TextEncoder``) from a local folder or hub id, or from an
    fsspec URI (``s3://…/encoder``) through a temporary copy that is removed once the weights are in
    memory: copies kept in the pod's ``/tmp`` (a size-limited emptyDir in the chart) would pile up with
    every model version until the kubelet evicts the pod."""
    from distilrec.text import TextEncoder as Encoder

    if "://" not in uri:
        return Encoder(uri)
    import tempfile

    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    with tempfile.TemporaryDirectory(prefix="distilrec-encoder-") as local:
        fs.get(path.rstrip("/") + "/", local, recursive=True)
        return Encoder(local)


@serve.deployment(
    health_check_period_s=2, max_ongoing_requests=32, max_queued_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    ray_actor_options={"num_cpus": 0.25},
)
class TextEncoder:
    def __init__(self, model_uri: str):
        self._encoders: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        try:
            uri = resolve(model_uri)
            first = encoder_location(uri, read_manifest(uri))
            if first:
                self._get(first)
        except Exception as e:  # noqa: BLE001 - loaded on first use instead; the replica stays up
            log.warning("text encoder not loaded at start: %s", e)

    def _get(self, encoder_uri: str):
        with self._lock:
            enc = self._encoders.get(encoder_uri)
            if enc is None:
                enc = load_text_encoder(encoder_uri)
                self._encoders[encoder_uri] = enc
                while len(self._encoders) > KEEP_ENCODERS:
                    self._encoders.popitem(last=False)
            self._encoders.move_to_end(encoder_uri)
            return enc

    def encode(self, texts: list[str], encoder_uri: str) -> np.ndarray:
        """``(len(texts), dim)`` float32, L2-normalised, with the encoder at ``encoder_uri``. Raises
        ``ValueError`` for more than ``MAX_TEXTS`` texts, ``distilrec.text.EncoderLoadError`` when the
        encoder cannot be loaded."""
        if len(texts) > MAX_TEXTS:
            raise ValueError(f"at most {MAX_TEXTS} texts per call, got {len(texts)}")
        return self._get(encoder_uri).encode(list(texts))
