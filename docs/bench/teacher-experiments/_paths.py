"""Where the experiment scripts find the repo, the dataset, a pipeline run, and where they write.

Environment: ``DATASET`` (default ``../shared/datasets/ml-latest-small`` beside the repo), ``RUN`` (a
``distilrec pipeline --output`` folder; default ``out`` in the repo), ``EXP_OUT`` (default
``/tmp/teacher-experiments``), ``RUNS`` (several pipeline output folders, separated by ``:``, for
the scripts that compare the teachers of several runs)."""
import glob
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
DATASET = "movielens:" + os.environ.get("DATASET", str(REPO.parent / "shared/datasets/ml-latest-small"))
RUN = pathlib.Path(os.environ.get("RUN", REPO / "out"))
OUT = pathlib.Path(os.environ.get("EXP_OUT", "/tmp/teacher-experiments"))
RUNS = [pathlib.Path(p) for p in os.environ.get("RUNS", "").split(":") if p]
OUT.mkdir(parents=True, exist_ok=True)


def text_embeddings_file() -> str:
    """The pipeline run's cached item text embeddings (one ``text-emb-*.npy`` in its ``cache``)."""
    found = sorted(glob.glob(str(RUN / "cache" / "text-emb-*.npy")))
    if len(found) != 1:
        raise SystemExit(f"expected one text-emb-*.npy in {RUN / 'cache'}, found {len(found)}: set RUN")
    return found[0]
