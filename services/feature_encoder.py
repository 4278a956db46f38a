"""FeatureEncoder deployment: a user id and request history → the model's input rows.

The stored history comes from the artifact's interaction log; the request's ``history`` is appended
(most recent last). Unknown item ids are reported back, never silently dropped.
"""

from __future__ import annotations

from ray import serve

from distilrec.artifacts import load_artifact


@serve.deployment
class FeatureEncoder:
    def __init__(self, model_uri: str):
        art = load_artifact(model_uri)
        self.version = art.version
        self.index = art.items.index
        self.histories = {u: [self.index[i] for i in items if i in self.index] for u, items in art.histories.items()}

    def encode(self, user_id: str | None, history: list[str] | None) -> dict:
        """``{"rows": [...] (time order), "known_user": bool, "unknown_items": [...]}``."""
        rows = list(self.histories.get(user_id, [])) if user_id is not None else []
        known_user = user_id is not None and user_id in self.histories
        unknown = []
        for item in history or []:
            row = self.index.get(item)
            if row is None:
                unknown.append(item)
            else:
                rows.append(row)
        return {"rows": rows, "known_user": known_user, "unknown_items": unknown}

    def item_rows(self, item_ids: list[str]) -> tuple[list[int], list[str]]:
        """Rows of the known ids, and the ids that are not in the catalogue."""
        rows = [self.index[i] for i in item_ids if i in self.index]
        return rows, [i for i in item_ids if i not in self.index]
