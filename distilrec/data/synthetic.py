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
