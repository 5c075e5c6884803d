"""An adapter's own labels.json (a plain list in head order, as training writes it) names its classes.

Before, only dict-shaped metadata was read, so an adapter evaluated without its training dataset (deleted, or
an adapter imported from elsewhere) took the labels of the dataset it was scored on, in that dataset's order.
"""

from __future__ import annotations

import json

from studio.evaluation.loading import saved_labels


def test_the_studio_labels_file_is_read_in_head_order(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(["mRNA", "lncRNA"]))
    (tmp_path / "other.json").write_text(json.dumps({"labels": ["lncRNA", "mRNA"]}))  # its own file wins
    assert saved_labels(tmp_path) == ["mRNA", "lncRNA"]


def test_metadata_with_labels_is_still_read_and_nothing_is_none(tmp_path):
    assert saved_labels(tmp_path) is None
    (tmp_path / "meta.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert saved_labels(tmp_path) == ["a", "b"]
    (tmp_path / "labels.json").write_text("not json")  # unreadable: the metadata still answers
    assert saved_labels(tmp_path) == ["a", "b"]
