"""Print the logistic-regression baseline of a sequence classification data set (train/test JSONL).

The baseline the evaluation job fits with ``include_baseline`` (``studio.sequences.baseline``):
k-mer frequencies, log length, longest ORF and its share of the length, then a scaled logistic
regression fit on ``train.jsonl`` and scored on ``test.jsonl``.

    python scripts/sequence_baseline.py                                    # the in-repo lncRNA sample
    python scripts/sequence_baseline.py --data ../shared/data/lncrna_athaliana --ks 1,2,3,4 --both-strands
    python scripts/sequence_baseline.py --data ../shared/data/lncrna_athaliana --ablation   # which features carry it

``--ablation`` (nucleotide data) refits the same scaled logistic regression on subsets of the
baseline's features (k-mer frequencies, 3-mers, log length, the longest-ORF pair, length + ORF)
and prints a Markdown table of test accuracy and AUROC per subset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.sequences.baseline import MAX_ITER, fit_baseline
from studio.sequences.features import nucleotide_feature_names, nucleotide_features

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def ablation_subsets(ks: tuple[int, ...]) -> dict[str, list[int]]:
    """Column indices of :func:`nucleotide_features` for each ablation subset (name -> indices)."""
    names = nucleotide_feature_names(ks)
    kmers = [i for i, n in enumerate(names) if n not in ("log_length", "log_longest_orf", "orf_share")]
    length, orf = [names.index("log_length")], [names.index("log_longest_orf"), names.index("orf_share")]
    subsets = {"all features": list(range(len(names))), "k-mer frequencies only": kmers}
    if 3 in ks:
        subsets["3-mer frequencies only"] = [i for i in kmers if len(names[i]) == 3]
    subsets["log length only"] = length
    subsets["longest ORF only (log ORF length + ORF share)"] = orf
    subsets["log length + longest ORF"] = length + orf
    return subsets


def ablation(
    train: list[dict], test: list[dict], text_field: str, label_field: str, ks: tuple[int, ...], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Test accuracy and AUROC of the baseline's model (scaler + logistic regression) on each feature subset.

    Features are computed once (``nucleotide_features``, as the baseline does), then each subset's
    columns are fit on the train rows and scored on the test rows. Binary labels only (AUROC).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def columns(rows: list[dict]) -> tuple[np.ndarray, list]:
        kept = [r for r in rows if isinstance(r.get(text_field), str) and r.get(label_field) is not None]
        return np.array([nucleotide_features(r[text_field], ks) for r in kept]), [r[label_field] for r in kept]

    (x_train, y_train), (x_test, y_test) = columns(train), columns(test)
    if len(set(y_train)) != 2:
        raise SystemExit("--ablation needs exactly two labels in train.jsonl")
    results = {}
    for name, index in ablation_subsets(ks).items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, random_state=seed))
        model.fit(x_train[:, index], y_train)
        positive = model.predict_proba(x_test[:, index])[:, 1]  # the probability of classes_[1]
        truth = [y == model.classes_[1] for y in y_test]
        results[name] = {
            "features": len(index),
            "accuracy": float(accuracy_score(y_test, model.predict(x_test[:, index]))),
            "auroc": float(roc_auc_score(truth, positive)),
        }
    return results


def ablation_table(results: dict[str, dict[str, float]]) -> str:
    """The ablation as a Markdown table."""
    lines = ["| features | count | test accuracy | AUROC |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {r['features']} | {r['accuracy']:.3f} | {r['auroc']:.3f} |" for n, r in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--text-field", default="sequence")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--ks", default="1,2,3", help="k-mer sizes, comma-separated")
    parser.add_argument("--both-strands", action="store_true", help="also search ORFs on the reverse complement")
    parser.add_argument("--ablation", action="store_true", help="print test accuracy per feature subset")
    args = parser.parse_args()
    train, test = read(args.data / "train.jsonl"), read(args.data / "test.jsonl")
    if args.ablation:
        ks = tuple(int(k) for k in args.ks.split(","))
        print(ablation_table(ablation(train, test, args.text_field, args.label_field, ks)))
        return
    result = fit_baseline(
        train,
        test,
        text_field=args.text_field,
        label_field=args.label_field,
        ks=tuple(int(k) for k in args.ks.split(",")),
        both_strands=args.both_strands,
    )
    print(json.dumps(result.to_dict(), indent=2, default=str))


if __name__ == "__main__":
    main()
