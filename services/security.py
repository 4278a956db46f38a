"""Where the service finds its admin token: the bearer token that POST /v1/items and POST
/v1/model/reload require.

- ``$DISTILREC_ADMIN_TOKEN``: the token itself (local runs, tests).
- else ``$DISTILREC_ADMIN_TOKEN_FILE``: a file that holds it (the Helm chart mounts the admin Secret
  read-only and names the file here, so the token never sits in the pod's environment). Leading and
  trailing whitespace is stripped. The file is read again when it changes (a rotated Secret: the kubelet
  swaps the file in place), otherwise served from memory; a check costs one ``stat``.
- neither: no token, the admin routes are open (local runs only).

A configured file that cannot be read, or that is empty, fails closed: :func:`admin_token` logs the
error and returns a random token that no client holds, so admin calls are refused (401) until the file
is readable again.

>>> import os, tempfile
>>> with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as f:
...     _ = f.write("s3cret\\n")
>>> admin_token({ADMIN_TOKEN_FILE_ENV: f.name})
's3cret'
>>> admin_token({ADMIN_TOKEN_ENV: "from-env", ADMIN_TOKEN_FILE_ENV: f.name})
'from-env'
>>> os.unlink(f.name)
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping

ADMIN_TOKEN_ENV = "DISTILREC_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "DISTILREC_ADMIN_TOKEN_FILE"

log = logging.getLogger(__name__)

_lock = threading.Lock()
# path -> ((st_ino, st_mtime_ns, st_size), token): the last successful read of each file.
_cache: dict[str, tuple[tuple[int, int, int], str]] = {}
# path -> the last error logged for it, so that a lasting failure is logged once, not on every call.
_logged: dict[str, str] = {}


def admin_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token: ``$DISTILREC_ADMIN_TOKEN``, else the content of ``$DISTILREC_ADMIN_TOKEN_FILE``,
    else ``None`` (no token configured). Never ``None`` nor empty when a file is configured: an unreadable
    or empty file gives a fresh random token (fail closed) and an error in the log."""
    env = os.environ if environ is None else environ
    token = env.get(ADMIN_TOKEN_ENV)
    if token:
        return token
    path = env.get(ADMIN_TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        return _read(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        message = f"{type(e).__name__}: {e}"
        with _lock:
            first = _logged.get(path) != message
            _logged[path] = message
        if first:
            log.error("the admin token file %s=%s cannot be used (%s): admin calls are refused until it can",
                      ADMIN_TOKEN_FILE_ENV, path, message)
        return secrets.token_urlsafe(32)


def _read(path: str) -> str:
    st = os.stat(path)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError("the file is empty")
    with _lock:
        _cache[path] = (key, token)
        if _logged.pop(path, None) is not None:
            log.warning("the admin token file %s is readable again", path)
    return token
