"""How far do richer hand-made coding-potential features go? The headroom a sequence model is chasing.

The studio's baseline (``studio.sequences.baseline``) reads k-mer frequencies, length and the
longest ORF. Tools such as CPAT add more: where the ORF sits (UTR lengths), the start codon's
Kozak context, GC content at codon third positions, and codon usage inside the ORF (CPAT's
hexamer score). This script fits scikit-learn models on those numbers, train rows only, and scores
the test rows, so a LoRA-BERT result can be read against what is reachable from the sequence by
hand-made features, not only against the baseline:

- logistic regression (scaled, as the baseline) on the longest-ORF pair (log ORF length, its share of
  the transcript), then that pair plus each other feature, then all of them;
- gradient boosting (``HistGradientBoostingClassifier``) on all of them (interactions, thresholds).

Features of a transcript (sense strand, its longest ATG ... stop ORF in the three forward frames):
``log_orf``, ``orf_share``, ``log_length``, ``log_utr5`` and ``log_utr3`` (nucleotides before the ATG
and after the stop), ``kozak_minus3`` (A/G three before the ATG) and ``kozak_plus4`` (G right after
it), ``gc`` (whole transcript), ``orf_gc``, ``orf_gc3`` (codon third positions), and ``hexamer``: the
mean log ratio of each in-frame hexamer's frequency in the ORFs of one class against the other's
(CPAT's score; tables from train rows only, and a train row's own score from tables fit on the other
four fifths, so it is not read from itself).

    python scripts/coding_potential_ceiling.py                                         # in-repo sample
    python scripts/coding_potential_ceiling.py --data ../shared/data/lncrna_athaliana \\
        --out bench/results/coding_potential_ceiling.json                             # ~20 s
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.sequences.alphabet import to_dna  # noqa: E402
from studio.sequences.features import longest_orf_span  # noqa: E402
from studio.training.data import read_jsonl  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "samples" / "lncrna_athaliana"
PAIR = ["log_orf", "orf_share"]
FOLDS = 5
HEXAMERS = 4**6


def orf_hexamers(dna: str, start: int, end: int) -> list[str]:
    """The in-frame hexamers of the ORF ``dna[start:end]`` (one every codon)."""
    return [dna[i : i + 6] for i in range(start, end - 5, 3)]


def hexamer_tables(rows: Sequence[tuple[str, Any]], coding_label: Any) -> tuple[Counter, Counter]:
    """Hexamer counts in the longest ORFs of the ``coding_label`` rows and of the other rows."""
    coding, other = Counter(), Counter()
    for dna, label in rows:
        start, end = longest_orf_span(dna)
        (coding if label == coding_label else other).update(orf_hexamers(dna, start, end))
    return coding, other


def hexamer_score(dna: str, tables: tuple[Counter, Counter]) -> float:
    """Mean log frequency ratio (add-one smoothed) of the ORF's hexamers, coding table over the other; 0 without any."""
    coding, other = tables
    hexamers = orf_hexamers(dna, *longest_orf_span(dna))
    if not hexamers:
        return 0.0
    coding_total, other_total = sum(coding.values()) + HEXAMERS, sum(other.values()) + HEXAMERS
    return sum(
        math.log((coding[h] + 1) / coding_total) - math.log((other[h] + 1) / other_total) for h in hexamers
    ) / len(hexamers)


def transcript_features(dna: str) -> dict[str, float]:
    """Every feature but ``hexamer`` (which needs tables fit on training rows)."""
    start, end = longest_orf_span(dna)
    length, orf = len(dna), dna[start:end]
    codons = max(len(orf) // 3, 1)

    def gc(text: str) -> float:
        return (text.count("G") + text.count("C")) / max(len(text), 1)

    return {
        "log_orf": math.log1p(end - start),
        "orf_share": (end - start) / max(length, 1),
        "log_length": math.log1p(length),
        "log_utr5": math.log1p(start),
        "log_utr3": math.log1p(length - end),
        "kozak_minus3": float(start >= 3 and dna[start - 3] in "AG"),
        "kozak_plus4": float(end > start and start + 3 < length and dna[start + 3] == "G"),
        "gc": gc(dna),
        "orf_gc": gc(orf),
        "orf_gc3": sum(orf[i + 2] in "GC" for i in range(0, len(orf) - 2, 3)) / codons,
    }


def feature_rows(
    train: Sequence[tuple[str, Any]], test: Sequence[tuple[str, Any]], coding_label: Any
) -> tuple[list[dict], list[dict]]:
    """Features of the train and test rows; train rows' hexamer score is cross-fitted (``FOLDS`` folds)."""
    fold_tables = [
        hexamer_tables([r for i, r in enumerate(train) if i % FOLDS != k], coding_label) for k in range(FOLDS)
    ]
    full = hexamer_tables(train, coding_label)
    train_rows = [
        {**transcript_features(dna), "hexamer": hexamer_score(dna, fold_tables[i % FOLDS])}
        for i, (dna, _) in enumerate(train)
    ]
    test_rows = [{**transcript_features(dna), "hexamer": hexamer_score(dna, full)} for dna, _ in test]
    return train_rows, test_rows


def fit_and_score(model: Any, names: list[str], train: list[dict], test: list[dict], y_train, y_test) -> dict:
    """Test accuracy and AUROC of ``model`` fit on the ``names`` columns of the train rows."""
    import numpy as np
    from sklearn.metrics import accuracy_score, roc_auc_score

    x_train = np.array([[row[n] for n in names] for row in train])
    x_test = np.array([[row[n] for n in names] for row in test])
    model.fit(x_train, y_train)
    positive = model.predict_proba(x_test)[:, 1]
    truth = [y == model.classes_[1] for y in y_test]
    return {
        "features": names,
        "accuracy": float(accuracy_score(y_test, model.predict(x_test))),
        "auroc": float(roc_auc_score(truth, positive)),
    }


def ceiling(train: Sequence[tuple[str, Any]], test: Sequence[tuple[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Every model's test accuracy and AUROC: ``{"rows": {name: result}, "coding_label": ...}``.

    ``train``/``test`` are ``(dna, label)`` pairs with two labels; the coding class is the one whose
    longest ORFs are longer on average in the train rows (mRNA), so no label name is assumed.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = sorted({label for _, label in train}, key=str)
    if len(labels) != 2:
        raise SystemExit(f"two labels are needed in the train rows, found {labels}")

    def mean_orf(label: Any) -> float:
        spans = [longest_orf_span(dna) for dna, y in train if y == label]
        return sum(e - s for s, e in spans) / max(len(spans), 1)

    coding_label = max(labels, key=mean_orf)
    train_rows, test_rows = feature_rows(train, test, coding_label)
    y_train, y_test = [y for _, y in train], [y for _, y in test]
    names = list(train_rows[0])

    def logistic() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))

    rows = {"logistic: longest-ORF pair": fit_and_score(logistic(), PAIR, train_rows, test_rows, y_train, y_test)}
    for name in names:
        if name not in PAIR:
            rows[f"logistic: pair + {name}"] = fit_and_score(
                logistic(), [*PAIR, name], train_rows, test_rows, y_train, y_test
            )
    rows["logistic: all"] = fit_and_score(logistic(), names, train_rows, test_rows, y_train, y_test)
    boosted = HistGradientBoostingClassifier(random_state=seed)
    rows["gradient boosting: all"] = fit_and_score(boosted, names, train_rows, test_rows, y_train, y_test)
    return {"coding_label": coding_label, "train_rows": len(train), "test_rows": len(test), "rows": rows}


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    lines = ["| model: features | test accuracy | AUROC |", "| --- | --- | --- |"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['auroc']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--text-field", default="sequence")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    began = time.monotonic()

    def pairs(name: str) -> list[tuple[str, Any]]:
        rows = read_jsonl(args.data / name)
        print(f"{name}: {len(rows)} rows", flush=True)
        return [(to_dna(r[args.text_field]), r[args.label_field]) for r in rows if r.get(args.text_field)]

    train, test = pairs("train.jsonl"), pairs("test.jsonl")
    print("features and fits ...", flush=True)
    result = ceiling(train, test, args.seed)
    result.update(data=str(args.data), seed=args.seed, seconds=round(time.monotonic() - began, 1))
    result["command"] = "python scripts/coding_potential_ceiling.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
