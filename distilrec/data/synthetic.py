"""A deterministic synthetic dataset with item text and sequential structure.

Items belong to topics; each item's title is built from its topic's vocabulary, so text carries
signal. Within a topic, items form a "series" order, and a user who watched item ``j`` tends to go on
to one of the next few items of the same series; users also drift between a few favourite topics and
sometimes pick a globally popular item. A sequence model can therefore beat popularity, and text
features help.

>>> ds = generate(users=50, items=40, seed=1)
>>> ds.n_users, ds.n_items <= 40, generate(users=50, items=40, seed=1).sequences[0].tolist() == ds.sequences[0].tolist()
(50, True, True)
"""

from __future__ import annotations

import numpy as np

from distilrec.data.dataset import Dataset

_TOPICS = {
    "space": ["star", "galaxy", "orbit", "rocket", "nebula", "planet", "comet", "astronaut"],
    "crime": ["detective", "heist", "alibi", "gangster", "verdict", "witness", "motive", "case"],
    "romance": ["love", "wedding", "kiss", "heart", "letter", "summer", "promise", "dance"],
    "horror": ["ghost", "haunted", "curse", "shadow", "scream", "crypt", "blood", "midnight"],
    "western": ["sheriff", "saloon", "outlaw", "frontier", "canyon", "rider", "gold", "dust"],
    "fantasy": ["dragon", "wizard", "kingdom", "sword", "quest", "elf", "throne", "spell"],
    "comedy": ["wacky", "roommate", "prank", "vacation", "awkward", "party", "blunder", "chaos"],
    "war": ["battalion", "frontline", "siege", "medal", "trench", "general", "convoy", "bunker"],
    "sport": ["champion", "coach", "league", "goal", "rookie", "stadium", "final", "team"],
    "music": ["band", "guitar", "concert", "melody", "tour", "singer", "rhythm", "album"],
    "ocean": ["reef", "whale", "sailor", "tide", "island", "harbor", "storm", "pearl"],
    "robot": ["android", "circuit", "machine", "laser", "cyber", "drone", "code", "neural"],
}
_FILLER = ["the", "of", "return", "last", "night", "secret", "story", "legend", "day", "city"]
_ROMAN = ["", " II", " III", " IV", " V", " VI"]


def generate(
    users: int = 1000,
    items: int = 300,
    seed: int = 0,
    min_len: int = 8,
    max_len: int = 40,
    p_series: float = 0.55,
    p_topic: float = 0.3,
) -> Dataset:
    """Generate a dataset. Same arguments, same data (numpy ``default_rng(seed)``).

    ``p_series``: chance that the next item continues the current series (one of the next 3 items
    of the last item's topic); ``p_topic``: chance of a popular item from a favourite topic; the rest
    is a globally popular item.
    """
    if users < 1 or items < 2:
        raise ValueError(f"synthetic data needs users >= 1 and items >= 2 (got {users}, {items})")
    rng = np.random.default_rng(seed)
    names = list(_TOPICS)
    n_topics = min(len(names), max(2, items // 10))
    topic_of = rng.integers(0, n_topics, size=items)
    popularity = rng.zipf(1.6, size=items).astype(float).clip(max=200.0)
    members = [np.flatnonzero(topic_of == t) for t in range(n_topics)]
    position = np.zeros(items, dtype=np.int64)
    for m in members:
        position[m] = np.arange(len(m))

    item_ids = [f"i{j}" for j in range(items)]
    titles, texts = [], []
    for j in range(items):
        words = _TOPICS[names[topic_of[j]]]
        w = rng.choice(words, size=2, replace=False)
        title = f"{rng.choice(_FILLER).title()} {w[0].title()} {w[1].title()}{_ROMAN[position[j] % len(_ROMAN)]}"
        titles.append(title)
        texts.append(f"{title}. genres: {names[topic_of[j]]}")

    global_p = popularity / popularity.sum()
    topic_p = []
    for m in members:
        p = popularity[m] if len(m) else np.ones(0)
        topic_p.append(p / p.sum() if len(m) else p)

    u_col, i_col, t_col = [], [], []
    for u in range(users):
        favs = rng.choice(n_topics, size=min(2, n_topics), replace=False)
        length = int(rng.integers(min_len, max_len + 1))
        cur = None
        seen: set[int] = set()
        t = int(rng.integers(0, 10_000))
        for _ in range(length * 3):  # users do not repeat items; retry a few times on a repeat
            if len(seen) == length:
                break
            r = rng.random()
            if cur is not None and r < p_series:
                m = members[topic_of[cur]]
                nxt = int(m[(position[cur] + rng.integers(1, 4)) % len(m)])
            elif r < p_series + p_topic:
                topic = int(rng.choice(favs))
                if len(members[topic]) == 0:
                    continue
                nxt = int(rng.choice(members[topic], p=topic_p[topic]))
            else:
                nxt = int(rng.choice(items, p=global_p))
            if nxt in seen:
                continue
            cur = nxt
            seen.add(cur)
            t += int(rng.integers(1, 1000))
            u_col.append(f"u{u}")
            i_col.append(item_ids[cur])
            t_col.append(t)
    text = {item_ids[j]: (titles[j], texts[j]) for j in range(items)}
    return Dataset.from_interactions(
        f"synthetic(users={users},items={items},seed={seed})", u_col, i_col, t_col, text
    )


# ------------------------------------------------------------------------------------------ at scale

#: Above either size, ``load_dataset("synthetic:...")`` uses :func:`write_parquet` (``chunked=1`` forces it).
CHUNKED_ABOVE_USERS = 50_000
CHUNKED_ABOVE_ITEMS = 50_000
INTERACTIONS_FILE, ITEMS_FILE = "interactions.parquet", "items.parquet"


def _catalogue(items: int, rng: np.random.Generator) -> dict:
    """The catalogue of :func:`write_parquet`, vectorised: topics, series positions, popularity, titles."""
    names = list(_TOPICS)
    n_topics = min(len(names), max(2, items // 10))
    topic_of = rng.integers(0, n_topics, size=items)
    popularity = rng.zipf(1.6, size=items).astype(np.float64).clip(max=200.0)
    members = np.argsort(topic_of, kind="stable")  # each topic's items in row order: its series
    sizes = np.bincount(topic_of, minlength=n_topics)
    start = np.r_[0, np.cumsum(sizes)[:-1]]
    position = np.empty(items, dtype=np.int64)
    position[members] = np.arange(items) - np.repeat(start, sizes)
    # one cumulative array over every topic, topic k's popularity CDF shifted into [k, k + 1]
    pop = popularity[members]
    seg_sum = np.add.reduceat(pop, start) if items else pop
    within = np.cumsum(pop) - np.repeat(np.cumsum(seg_sum) - seg_sum, sizes)
    topic_cdf = within / np.repeat(seg_sum, sizes) + np.repeat(np.arange(n_topics), sizes)
    words = np.array([_TOPICS[n] for n in names[:n_topics]])  # (topics, 8)
    w0 = rng.integers(0, words.shape[1], size=items)
    w1 = (w0 + rng.integers(1, words.shape[1], size=items)) % words.shape[1]
    filler = np.array([f.title() for f in _FILLER])[rng.integers(0, len(_FILLER), size=items)]
    title = np.char.add(np.char.add(np.char.add(np.char.add(filler, " "), np.char.title(words[topic_of, w0])), " "),
                        np.char.title(words[topic_of, w1]))
    title = np.char.add(title, np.array(_ROMAN)[position % len(_ROMAN)])
    return {"n_topics": n_topics, "topic_of": topic_of, "position": position, "members": members,
            "sizes": sizes, "start": start, "topic_cdf": topic_cdf, "global_cdf": np.cumsum(popularity) / popularity.sum(),
            "title": title, "genres": np.array(names[:n_topics])[topic_of]}


def _user_chunk(cat: dict, first_user: int, n_users: int, rng: np.random.Generator, min_len: int, max_len: int,
                p_series: float, p_topic: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_users`` users' interactions ``(user (M,) int32, item (M,) int32, unix seconds (M,) int64)``,
    drawn as :func:`generate` draws them but one step for all users at a time: each next item continues
    the last one's series (one of the next 3 of its topic) with ``p_series``, is a popular item of one
    of the user's two favourite topics with ``p_topic``, else a globally popular one; a repeat is
    drawn again (up to 3 × ``max_len`` steps)."""
    n_topics, topic_of, position = cat["n_topics"], cat["topic_of"], cat["position"]
    members, sizes, start = cat["members"], cat["sizes"], cat["start"]
    first = rng.integers(0, n_topics, size=n_users)
    favs = np.stack([first, (first + rng.integers(1, max(n_topics, 2), size=n_users)) % n_topics], 1)
    length = rng.integers(min_len, max_len + 1, size=n_users)
    seq = np.full((n_users, max_len), -1, dtype=np.int32)
    stamps = np.zeros((n_users, max_len), dtype=np.int64)
    count = np.zeros(n_users, dtype=np.int64)
    cur = np.full(n_users, -1, dtype=np.int64)
    clock = rng.integers(0, 10_000, size=n_users)
    for _ in range(3 * max_len):
        idx = np.flatnonzero(count < length)
        if not len(idx):
            break
        r = rng.random(len(idx))
        nxt = np.searchsorted(cat["global_cdf"], rng.random(len(idx)), side="right").clip(max=len(topic_of) - 1)
        topic = (r >= p_series) & (r < p_series + p_topic)
        series = (r < p_series) & (cur[idx] >= 0)
        topic |= (r < p_series) & (cur[idx] < 0)  # no last item yet: as the loop's first draw, a topic's
        tp = favs[idx[topic], rng.integers(0, 2, size=int(topic.sum()))]
        at = np.searchsorted(cat["topic_cdf"], tp + rng.random(len(tp)), side="right")
        nxt[topic] = members[np.clip(at, start[tp], start[tp] + sizes[tp] - 1)]
        c = cur[idx[series]]
        t = topic_of[c]
        nxt[series] = members[start[t] + (position[c] + rng.integers(1, 4, size=len(c))) % sizes[t]]
        fresh = ~(seq[idx] == nxt[:, None]).any(1)
        idx, nxt = idx[fresh], nxt[fresh]
        clock[idx] += rng.integers(1, 1000, size=len(idx))
        seq[idx, count[idx]] = nxt
        stamps[idx, count[idx]] = clock[idx]
        cur[idx] = nxt
        count[idx] += 1
    kept = np.arange(max_len)[None, :] < count[:, None]
    users = np.repeat(np.arange(first_user, first_user + n_users, dtype=np.int32), count)
    return users, seq[kept], stamps[kept]


def write_parquet(folder, users: int, items: int, seed: int = 0, min_len: int = 8, max_len: int = 40,
                  p_series: float = 0.55, p_topic: float = 0.3, chunk_users: int = 20_000) -> "Path":
    """Write a synthetic dataset of :func:`generate`'s structure at any size, in bounded memory, as the
    generic format's Parquet files (:mod:`distilrec.data.files`): ``folder/interactions.parquet``
    (``user_id`` int32, ``item_id`` int32, ``timestamp`` int64; one row group per ``chunk_users`` users)
    and ``folder/items.parquet`` (``item_id`` int32, ``title``, ``genres``: the item text
    ``"{title}. genres: {topic}"``). Same arguments, same files; the draws differ from :func:`generate`'s.
    Memory: the catalogue's arrays plus one chunk's ``chunk_users × max_len`` matrices."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    if users < 1 or items < 2 or items >= 2 ** 31 or not 1 <= min_len <= max_len:
        raise ValueError(f"synthetic data needs users >= 1, 2 <= items < 2**31 and 1 <= min_len <= max_len "
                         f"(got users={users}, items={items}, min_len={min_len}, max_len={max_len})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cat = _catalogue(items, np.random.default_rng([seed, 0]))
    pq.write_table(pa.table({"item_id": pa.array(np.arange(items, dtype=np.int32)),
                             "title": pa.array(cat.pop("title")), "genres": pa.array(cat.pop("genres"))}),
                   folder / ITEMS_FILE)
    schema = pa.schema([("user_id", pa.int32()), ("item_id", pa.int32()), ("timestamp", pa.int64())])
    with pq.ParquetWriter(folder / INTERACTIONS_FILE, schema) as writer:
        for k, first in enumerate(range(0, users, chunk_users)):
            n = min(chunk_users, users - first)
            u, i, t = _user_chunk(cat, first, n, np.random.default_rng([seed, 1, k]), min_len, max_len,
                                  p_series, p_topic)
            writer.write_table(pa.table([u, i, t], schema=schema))
    return folder


def load(users: int = 1000, items: int = 300, seed: int = 0, min_len: int = 8, max_len: int = 40,
         p_series: float = 0.55, p_topic: float = 0.3, chunked: int | None = None) -> Dataset:
    """The dataset of ``load_dataset("synthetic:...")``: :func:`generate` in memory, or, above
    ``CHUNKED_ABOVE_USERS`` users or ``CHUNKED_ABOVE_ITEMS`` items (``chunked=1`` forces it, ``chunked=0``
    forbids it), :func:`write_parquet` into ``$DISTILREC_DATA_DIR/synthetic/<arguments>/`` (written once,
    reused after) read back columnar through the generic format's loader."""
    import shutil
    import uuid

    from distilrec.data import files
    from distilrec.data.download import data_dir

    args = dict(users=users, items=items, seed=seed, min_len=min_len, max_len=max_len, p_series=p_series,
                p_topic=p_topic)
    if chunked is None:
        chunked = users > CHUNKED_ABOVE_USERS or items > CHUNKED_ABOVE_ITEMS
    if not chunked:
        return generate(**args)
    folder = data_dir() / "synthetic" / ",".join(f"{k}={v}" for k, v in args.items())
    if not (folder / INTERACTIONS_FILE).exists():
        tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")  # complete, or absent
        write_parquet(tmp, **args)
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    return files.load(folder / INTERACTIONS_FILE, folder / ITEMS_FILE,
                      name=f"synthetic(users={users},items={items},seed={seed})")
