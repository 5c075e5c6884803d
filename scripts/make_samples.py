"""Build ``data/samples/``: the small real data files shipped inside the repository.

Tests, scripts and benchmarks read these by default, so a clone works with nothing beside it.
Each sample is the first N rows of a file of the full public data set (one folder per data set,
the layout of ``--data``), so a run that uses at most N rows gives the same result on the sample
as on the full file. Each folder keeps the full data set's README (source, commit, licence) as
``SOURCE.md`` with a header saying which rows were kept.

    python scripts/make_samples.py --data ../shared/data            # rebuild data/samples
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "data" / "samples"

# data set -> {file: rows kept}. Sized for what the tests and the documented script runs read
# (e.g. scripts/real_data_lora.py's 800 short Alpaca rows, compare_variants' 2,000 SST-2 rows),
# at about 2.5 MB in all.
SAMPLE_ROWS: dict[str, dict[str, int]] = {
    "alpaca": {"train.jsonl": 2000, "test.jsonl": 200},
    "gsm8k": {"train.jsonl": 500, "test.jsonl": 200},
    "e2e_nlg": {"train.jsonl": 500, "dev.jsonl": 100},
    "sst2": {"train.jsonl": 2000, "dev.jsonl": 872},
    "oasst_chat": {"train.jsonl": 60, "test.jsonl": 71},
    "lncrna_athaliana": {"train.jsonl": 200, "test.jsonl": 100},
    "hh_rlhf_harmless": {"train.jsonl": 100, "test.jsonl": 50},
}


def first_lines(path: Path, count: int) -> str:
    """The first ``count`` lines of a JSONL file, byte for byte."""
    with path.open(encoding="utf-8", newline="") as handle:
        return "".join(line for _, line in zip(range(count), handle, strict=False))


def build(source: Path, target: Path) -> None:
    """Write every sample of ``SAMPLE_ROWS`` from ``source`` (a folder laid out like ``data/samples``)."""
    for name, files in SAMPLE_ROWS.items():
        folder = target / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        kept = []
        for file, count in files.items():
            text = first_lines(source / name / file, count)
            (folder / file).write_text(text, encoding="utf-8", newline="")
            kept.append(f"`{file}`: the first {text.count(chr(10)):,} rows")
        readme = (source / name / "README.md").read_text(encoding="utf-8")
        header = (
            f"> **Sample shipped with Adapter Studio.** {'; '.join(kept)} of the files described below, "
            "unchanged (made by `scripts/make_samples.py`). The row counts below are the full files'. "
            "The licence below applies to these rows, not the project's Apache-2.0.\n\n"
        )
        (folder / "SOURCE.md").write_text(header + readme, encoding="utf-8")
        print(f"{name}: {', '.join(kept)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder of the full data sets (one folder each).")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    args = parser.parse_args()
    build(args.data, args.out)


if __name__ == "__main__":
    main()
