"""Print the logistic-regression baseline of a sequence classification data set (train/test JSONL).

The baseline the evaluation job fits with ``include_baseline`` (``studio.sequences.baseline``):
k-mer frequencies, log length, longest ORF and its share of the length, then a scaled logistic
regression fit on ``train.jsonl`` and scored on ``test.jsonl``.

    python scripts/sequence_baseline.py                                    # the in-repo lncRNA sample
    python scripts/sequence_baseline.py --data ../shared/data/lncrna_athaliana --ks 1,2,3,4 --both-strands
    python scripts/sequence_baseline.py --data ../shared/data/lncrna_athaliana --ablation   # which features carry it

``--ablation`` (nucleotide data) refits the same scaled logistic regression on subsets of the
baseline's features (k-mer frequencies, 3-mers, log length, the longest-ORF pair, length + ORF)
and prints a Markdown table of test accuracy and AUROC per subset. Two more rows measure what a
windowed model can see of the ORF: the longest stretch of one reading frame without a stop codon that
lies inside ONE window, the max over a sequence's windows (log scale), for the windows of the
``pooled`` (64 3-mers: 66 nt, step 56) and ``orf`` (512 3-mers: 514 nt, step 448) recipes of
scripts/lncrna_pipeline.py.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from studio.sequences.alphabet import to_dna
from studio.sequences.baseline import MAX_ITER, fit_baseline
from studio.sequences.features import STOPS, nucleotide_feature_names, nucleotide_features

REPO_ROOT = Path(__file__).resolve().parents[1]
# (window, step) in nucleotides of the lncrna_pipeline recipes' 3-mer windows: content tokens + 2, minus overlap
WINDOW_RECIPES = {"pooled": (66, 56), "orf": (514, 448)}
DEFAULT_DATA = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def longest_stop_free(dna: str) -> int:
    """Longest stretch (nt) of one forward reading frame with no TAA/TAG/TGA in it (not ATG-bound)."""
    best = 0
    for frame in range(3):
        run = 0
        for i in range(frame, len(dna) - 2, 3):
            run = 0 if dna[i : i + 3] in STOPS else run + 3
            best = max(best, run)
    return best


def window_stop_free(sequence: str, window: int, step: int) -> int:
    """The longest stop-free frame stretch lying inside one window, max over the sequence's windows.

    What a model reading ``window``-nt windows (``step`` apart, the last one flush with the end, as
    studio/sequences/windows.py lays them out) and max-pooling them can at best know about the ORF.
    """
    dna = to_dna(sequence)
    starts = list(range(0, max(1, len(dna) - window + 1), step))
    if starts[-1] + window < len(dna):
        starts.append(len(dna) - window)
    return max(longest_stop_free(dna[s : s + window]) for s in starts)


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

    def features(text: str) -> list[float]:
        # the baseline's features, then one windowed stop-free stretch per recipe (log scale)
        windowed = [math.log1p(window_stop_free(text, w, s)) for w, s in WINDOW_RECIPES.values()]
        return [*nucleotide_features(text, ks), *windowed]

    def columns(rows: list[dict]) -> tuple[np.ndarray, list]:
        kept = [r for r in rows if isinstance(r.get(text_field), str) and r.get(label_field) is not None]
        return np.array([features(r[text_field]) for r in kept]), [r[label_field] for r in kept]

    (x_train, y_train), (x_test, y_test) = columns(train), columns(test)
    if len(set(y_train)) != 2:
        raise SystemExit("--ablation needs exactly two labels in train.jsonl")
    subsets = ablation_subsets(ks)
    base = len(nucleotide_feature_names(ks))
    for i, (recipe, (window, step)) in enumerate(WINDOW_RECIPES.items()):
        subsets[f"stop-free frame inside one {window}-nt window (step {step}; {recipe} recipe)"] = [base + i]
    results = {}
    for name, index in subsets.items():
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
