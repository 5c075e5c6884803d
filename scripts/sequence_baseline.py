"""Print the logistic-regression baseline of a sequence classification data set (train/test JSONL).

The baseline the evaluation job fits with ``include_baseline`` (``studio.sequences.baseline``):
k-mer frequencies, log length, longest ORF and its share of the length, then a scaled logistic
regression fit on ``train.jsonl`` and scored on ``test.jsonl``.

    python scripts/sequence_baseline.py                                    # the in-repo lncRNA sample
    python scripts/sequence_baseline.py --data ../shared/data/lncrna_athaliana --ks 1,2,3,4 --both-strands
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.sequences.baseline import fit_baseline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--text-field", default="sequence")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--ks", default="1,2,3", help="k-mer sizes, comma-separated")
    parser.add_argument("--both-strands", action="store_true", help="also search ORFs on the reverse complement")
    args = parser.parse_args()
    train, test = read(args.data / "train.jsonl"), read(args.data / "test.jsonl")
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
