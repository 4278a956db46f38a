"""Download and unpack the public MovieLens archives from GroupLens (standard library only).

``download_movielens("ml-latest-small", dest_dir)`` fetches
``https://files.grouplens.org/datasets/movielens/ml-latest-small.zip``, checks that it is a zip
archive, unpacks it and returns ``dest_dir/ml-latest-small``; when that folder already holds the
dataset's files nothing is downloaded. The spec ``movielens:ml-latest-small`` (a known name that is
not an existing path) does the same into :func:`data_dir`, then loads the folder.

``base_url`` may also be a ``file://`` URL or a plain directory that holds ``NAME.zip`` (a mirror,
or an air-gapped copy).

    python -c "from distilrec.data.download import download_movielens as d; print(d('ml-1m'))"
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from distilrec.config import cache_home

log = logging.getLogger("distilrec.data")

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DATA_DIR_ENV = "DISTILREC_DATA_DIR"

#: The datasets this module knows, and the files that show a folder holds one.
MOVIELENS_FILES: dict[str, tuple[str, ...]] = {
    "ml-latest-small": ("ratings.csv", "movies.csv"),
    "ml-25m": ("ratings.csv", "movies.csv"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-100k": ("u.data", "u.item"),
}


def data_dir() -> Path:
    """The dataset cache: ``$DISTILREC_DATA_DIR``, else ``datasets`` in :func:`distilrec.config.cache_home`
    (``$XDG_CACHE_HOME/distilrec``, or ``~/.cache/distilrec``)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else cache_home() / "datasets"


def is_complete(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds the files of MovieLens dataset ``name``."""
    return all((folder / f).is_file() for f in MOVIELENS_FILES[name])


def download_movielens(name: str, dest_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """Fetch ``{base_url}/{name}.zip``, unpack it into ``dest_dir`` and return ``dest_dir/name``.

    ``dest_dir`` defaults to :func:`data_dir`, ``base_url`` to :data:`DEFAULT_BASE_URL` (an
    ``http(s)://`` or ``file://`` URL, or a plain directory). Nothing is fetched when the folder is
    already complete. The archive is unpacked in a temporary folder next to the destination and
    moved into place at the end, so an interrupted download never leaves a half-filled folder.
    """
    if name not in MOVIELENS_FILES:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(MOVIELENS_FILES)}")
    dest = Path(dest_dir).expanduser() if dest_dir is not None else data_dir()
    folder = dest / name
    if is_complete(folder, name):
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} exists but lacks {', '.join(MOVIELENS_FILES[name])}; remove it to download again"
        )
    url = zip_url(name, base_url if base_url is not None else DEFAULT_BASE_URL)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        log.info("downloading %s", url)
        _fetch(url, archive)
        if not zipfile.is_zipfile(archive):
            raise ValueError(f"{url} is not a zip archive")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)  # extractall keeps every member inside ``unpacked``
        except zipfile.BadZipFile as err:
            raise ValueError(f"{url}: damaged zip archive ({err})") from None
        found = unpacked / name if (unpacked / name).is_dir() else unpacked
        if not is_complete(found, name):
            raise ValueError(f"{url}: the archive has no {name}/{{{','.join(MOVIELENS_FILES[name])}}}")
        try:
            os.replace(found, folder)
        except OSError:
            if not is_complete(folder, name):  # else another process just finished the same download
                raise
    log.info("MovieLens %s is in %s", name, folder)
    return folder


def zip_url(name: str, base_url: str) -> str:
    """``base_url/name.zip`` as a URL; a plain directory becomes a ``file://`` URL."""
    if "://" not in base_url:
        return (Path(base_url).expanduser().resolve() / f"{name}.zip").as_uri()
    return f"{base_url.rstrip('/')}/{name}.zip"


def _fetch(url: str, target: Path, timeout: float = 60.0) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"{url}: only http(s):// and file:// URLs (or a directory) can be downloaded")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except urllib.error.URLError as err:
        if scheme == "file":
            raise FileNotFoundError(f"{url}: cannot read ({err.reason})") from None
        raise OSError(f"download of {url} failed: {err.reason}") from err
