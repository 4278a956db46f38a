"""``distilrec.data.download`` against zip archives built in ``tmp_path`` (nothing is fetched from the network)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from distilrec.data import download, load_dataset
from distilrec.data.download import download_movielens

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,3\n1,20,4.0,1\n1,30,4.0,2\n2,10,1.0,1\n"
MOVIES = "movieId,title,genres\n10,A (2000),Drama\n20,B (2001),Comedy\n30,C (2002),Action\n"


def _zip(folder, name="ml-latest-small", files=None, prefix=None):
    """Write ``folder/name.zip`` holding ``prefix/file`` for each file (prefix defaults to ``name``)."""
    files = files if files is not None else {"ratings.csv": RATINGS, "movies.csv": MOVIES, "README.txt": "hi"}
    folder.mkdir(parents=True, exist_ok=True)
    prefix = name if prefix is None else prefix
    with zipfile.ZipFile(folder / f"{name}.zip", "w") as zf:
        for fname, text in files.items():
            zf.writestr(f"{prefix}/{fname}" if prefix else fname, text)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


def test_download_from_a_directory(tmp_path):
    mirror = _zip(tmp_path / "mirror")
    folder = download_movielens("ml-latest-small", tmp_path / "data", base_url=str(mirror))
    assert folder == tmp_path / "data" / "ml-latest-small"
    assert (folder / "ratings.csv").read_text() == RATINGS
    assert (folder / "README.txt").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-latest-small"]  # no leftovers
    ds = load_dataset(f"movielens:{folder}")
    assert ds.user_ids == ["1"] and [ds.item_ids[i] for i in ds.sequences[0]] == ["20", "30", "10"]


def test_download_from_a_file_url(tmp_path):
    mirror = _zip(tmp_path / "mirror", "ml-1m", {"ratings.dat": "1::10::5::1\n", "movies.dat": "10::A::Drama\n"})
    folder = download_movielens("ml-1m", tmp_path / "data", base_url=mirror.as_uri() + "/")
    assert (folder / "ratings.dat").read_text() == "1::10::5::1\n"


def test_archive_without_a_top_folder(tmp_path):
    mirror = _zip(tmp_path / "mirror", "ml-100k", {"u.data": "1\t10\t5\t1\n", "u.item": "10|A|||x\n"}, prefix="")
    folder = download_movielens("ml-100k", tmp_path / "data", base_url=str(mirror))
    assert (folder / "u.data").exists() and (folder / "u.item").exists()


def test_complete_folder_is_not_downloaded_again(tmp_path, no_network):
    folder = tmp_path / "data" / "ml-25m"
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text(RATINGS)
    (folder / "movies.csv").write_text(MOVIES)
    assert download_movielens("ml-25m", tmp_path / "data") == folder


def test_not_a_zip_is_an_error(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "ml-1m.zip").write_text("<html>not found</html>")
    with pytest.raises(ValueError, match="ml-1m.zip is not a zip archive"):
        download_movielens("ml-1m", tmp_path / "data", base_url=str(tmp_path / "mirror"))
    assert not (tmp_path / "data" / "ml-1m").exists()
    assert list((tmp_path / "data").iterdir()) == []  # the temporary folder is gone


def test_archive_without_the_files_is_an_error(tmp_path):
    mirror = _zip(tmp_path / "mirror", "ml-1m", {"ratings.dat": "1::10::5::1\n"})
    with pytest.raises(ValueError, match="the archive has no ml-1m/"):
        download_movielens("ml-1m", tmp_path / "data", base_url=str(mirror))
    assert not (tmp_path / "data" / "ml-1m").exists()


def test_missing_archive_is_named(tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(FileNotFoundError, match="ml-1m.zip"):
        download_movielens("ml-1m", tmp_path / "data", base_url=(tmp_path / "mirror").as_uri())


def test_unknown_name_and_scheme(tmp_path):
    with pytest.raises(ValueError, match="unknown MovieLens dataset 'ml-2m'; known: ml-latest-small"):
        download_movielens("ml-2m", tmp_path)
    with pytest.raises(ValueError, match="only http"):
        download_movielens("ml-1m", tmp_path, base_url="ftp://example.org/movielens")


def test_incomplete_existing_folder_is_left_alone(tmp_path):
    mirror = _zip(tmp_path / "mirror")
    (tmp_path / "data" / "ml-latest-small").mkdir(parents=True)
    (tmp_path / "data" / "ml-latest-small" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="remove it to download again"):
        download_movielens("ml-latest-small", tmp_path / "data", base_url=str(mirror))
    assert (tmp_path / "data" / "ml-latest-small" / "mine.txt").read_text() == "keep me"


def test_default_url_and_cache_dir(monkeypatch, tmp_path):
    assert download.zip_url("ml-25m", download.DEFAULT_BASE_URL) == (
        "https://files.grouplens.org/datasets/movielens/ml-25m.zip")
    monkeypatch.delenv("DISTILREC_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.data_dir() == tmp_path / ".cache" / "distilrec" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/cache")  # what the chart's pods have (read-only root filesystem)
    assert download.data_dir() == Path("/tmp/cache/distilrec/datasets")
    monkeypatch.setenv("DISTILREC_DATA_DIR", str(tmp_path / "cache"))
    assert download.data_dir() == tmp_path / "cache"


# -------------------------------------------------------------------------------- spec movielens:NAME

def test_spec_with_a_name_uses_the_cached_folder(tmp_path, monkeypatch, no_network):
    cache = tmp_path / "cache"
    (cache / "ml-latest-small").mkdir(parents=True)
    (cache / "ml-latest-small" / "ratings.csv").write_text(RATINGS)
    (cache / "ml-latest-small" / "movies.csv").write_text(MOVIES)
    monkeypatch.setenv("DISTILREC_DATA_DIR", str(cache))
    monkeypatch.chdir(tmp_path)  # no ./ml-latest-small here
    ds = load_dataset("movielens:ml-latest-small")
    assert ds.name == "movielens:ml-latest-small" and ds.n_users == 1


def test_spec_with_a_name_downloads_once(tmp_path, monkeypatch):
    mirror = _zip(tmp_path / "mirror")
    monkeypatch.setattr(download, "DEFAULT_BASE_URL", mirror.as_uri())
    monkeypatch.setenv("DISTILREC_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("movielens:ml-latest-small,skip_bad_rows=1")
    assert ds.n_interactions == 3
    assert (tmp_path / "cache" / "ml-latest-small" / "movies.csv").exists()
    (mirror / "ml-latest-small.zip").unlink()  # a second load does not need the archive
    assert load_dataset("movielens:ml-latest-small").n_interactions == 3


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch, no_network):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::10::5::1\n1::20::5::2\n1::30::5::3\n")
    (tmp_path / "ml-1m" / "movies.dat").write_text("10::A::Drama\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILREC_DATA_DIR", str(tmp_path / "cache"))
    assert load_dataset("movielens:ml-1m").n_interactions == 3
    assert not (tmp_path / "cache").exists()
