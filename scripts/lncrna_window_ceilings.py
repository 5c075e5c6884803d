"""What can a windowed codon model see at best? Logistic-regression "ceilings" on lncRNA vs mRNA.

Issue #19: the codon recipe (studio/sequences/recipes.py CODING_POTENTIAL) reads each of the three
forward reading frames as codons, cuts every frame into overlapping windows of W codons (a new one
every S codons, the last flush with the end: :func:`studio.sequences.windows.window_spans`) and pools
its windows' logits per sequence. This script asks how far ONE OR A FEW NUMBERS per sequence that such
a model could compute get on the same train/test split: each feature set below goes through the same
scaled logistic regression (``StandardScaler`` + ``LogisticRegression(C=1, max_iter=2000)``, fit on
``train.jsonl``, scored on ``test.jsonl``).

These are "ceilings" only in a loose sense: a logistic regression on hand-picked numbers, not an upper
bound on what a windowed network can learn (a model sees every codon of a window and may find more;
its pooling may also fail to compute these numbers). What they say is where the simple, plausible
signals a windowed model can reach stand next to the whole-transcript baseline (0.921 with k-mers).

Feature sets (every log is ``log1p``, so zero is allowed):

a. whole transcript (no windows): the longest stop-free stretch of any forward frame (no ATG needed;
   ``scripts/sequence_baseline.longest_stop_free``), the length, the longest ATG…stop ORF
   (``studio.sequences.features.longest_orf``, the baseline's own);
b. per window setting, counted over all windows of all three frames: windows with 0, ≤1, ≤2, ≤3 stop
   codons, with 0 stops and an ATG, and all windows; as linear counts (what SUM pooling of a
   per-window score adds up) and as log counts; "any stop-free window" (MAX pooling of an indicator);
c. per window setting: the max over windows of the longest ATG→stop ORF inside the window (an ORF
   still open at the window's end counts up to there) and of the longest stop-free stretch inside it;
d. per window setting: the longest run of consecutive stop-free windows in one frame.

    python scripts/lncrna_window_ceilings.py                                  # the in-repo sample
    OMP_NUM_THREADS=1 python scripts/lncrna_window_ceilings.py --data /work/shared/data/lncrna_athaliana
    python scripts/lncrna_window_ceilings.py --windows 128:32,256:64 --quick  # chosen settings, fewer rows

Prints a Markdown table as each window setting finishes (~6 s in all on the full data, one CPU thread) and
writes bench/results/lncrna_window_ceilings.json (every number, the data path, rows and settings).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sequence_baseline import longest_stop_free  # noqa: E402

from bench.common import RESULTS_DIR, SAMPLES_DIR, loadavg, read_jsonl, write_json  # noqa: E402
from studio.sequences.alphabet import to_dna  # noqa: E402
from studio.sequences.features import START, STOPS, longest_orf  # noqa: E402
from studio.sequences.tokenizers import CODON_FRAMES, codon_text  # noqa: E402
from studio.sequences.windows import window_spans  # noqa: E402

DEFAULT_DATA = SAMPLES_DIR / "lncrna_athaliana"
DEFAULT_OUT = RESULTS_DIR / "lncrna_window_ceilings.json"
# (window, step) in codons: the codon recipe's 128/32, its neighbours, and 256-codon windows
DEFAULT_WINDOWS = ((128, 64), (128, 32), (128, 16), (256, 64), (256, 128))
QUICK_ROWS = {"train": 300, "test": 100}  # --quick: the first rows of each split
MAX_STOPS = 3  # windows with at most 0, 1, ..., MAX_STOPS stop codons are counted
C, MAX_ITER = 1.0, 2000
TABLE_HEADERS = ("window (codons)", "step", "feature set", "features", "test accuracy", "AUROC")


# --- features of one sequence ---------------------------------------------------------------------------------------


def frame_codons(sequence: str) -> list[list[str]]:
    """The codons of each forward reading frame, exactly as the codon tokenizer reads them (``codon_text``)."""
    return [codon_text(sequence, frame).split() for frame in range(CODON_FRAMES)]


def transcript_features(sequence: str) -> dict[str, int]:
    """Whole-transcript numbers (nt): length, longest stop-free frame stretch, longest ATG…stop ORF."""
    dna = to_dna(sequence)
    return {"length": len(dna), "stop_free": longest_stop_free(dna), "orf": longest_orf(dna)}


class FrameIndex:
    """Where the stops and ATGs of one frame's codons are, with running counts, to read any window fast."""

    def __init__(self, codons: Sequence[str]):
        self.n = len(codons)
        self.stops = [i for i, c in enumerate(codons) if c in STOPS]
        self.atgs = [i for i, c in enumerate(codons) if c == START]
        self.stops_before = [0, *accumulate(c in STOPS for c in codons)]
        self.atgs_before = [0, *accumulate(c == START for c in codons)]

    def stop_count(self, start: int, end: int) -> int:
        """Stop codons in codons ``[start, end)``."""
        return self.stops_before[end] - self.stops_before[start]

    def has_atg(self, start: int, end: int) -> bool:
        """Whether codons ``[start, end)`` hold an ATG."""
        return self.atgs_before[end] > self.atgs_before[start]

    def stop_free(self, start: int, end: int) -> int:
        """The longest run of non-stop codons inside ``[start, end)`` (codons)."""
        previous, best = start - 1, 0
        for position in self.stops[bisect_left(self.stops, start) : bisect_left(self.stops, end)]:
            best = max(best, position - previous - 1)
            previous = position
        return max(best, end - previous - 1)

    def orf(self, start: int, end: int) -> int:
        """The longest ATG→stop ORF inside ``[start, end)`` (codons, stop included; one still open at ``end`` counts to it).

        As ``longest_orf`` reads a frame: an ORF starts at the first ATG, ends at the next stop, and
        ATGs inside an open ORF start nothing; the next ORF starts at the first ATG after that stop.
        """
        best, position = 0, start
        while True:
            i = bisect_left(self.atgs, position)
            if i == len(self.atgs) or self.atgs[i] >= end:
                return best
            atg = self.atgs[i]
            j = bisect_left(self.stops, atg)
            if j == len(self.stops) or self.stops[j] >= end:
                return max(best, end - atg)  # open at the window's end: what the window shows of it
            best = max(best, self.stops[j] - atg + 1)
            position = self.stops[j] + 1


def window_features(frames: Sequence[FrameIndex], window: int, step: int) -> dict[str, int]:
    """Counts and maxima over the windows of all frames (``window_spans(n, window, window - step)`` of each).

    ``windows``: all windows; ``stops_le_K``: windows with at most K stop codons (K = 0..MAX_STOPS);
    ``stop_free_atg``: stop-free windows holding an ATG; ``window_orf`` / ``window_stop_free``: the
    longest ORF / stop-free stretch inside one window (codons, max over windows); ``free_run``: the
    longest run of consecutive stop-free windows in one frame.
    """
    out = dict.fromkeys(
        ["windows", *(f"stops_le_{k}" for k in range(MAX_STOPS + 1)), "stop_free_atg"]
        + ["window_orf", "window_stop_free", "free_run"],
        0,
    )
    for frame in frames:
        run = 0
        for start, end in window_spans(frame.n, window, window - step):
            stops = frame.stop_count(start, end)
            out["windows"] += 1
            for k in range(stops, MAX_STOPS + 1):
                out[f"stops_le_{k}"] += 1
            out["stop_free_atg"] += stops == 0 and frame.has_atg(start, end)
            out["window_orf"] = max(out["window_orf"], frame.orf(start, end))
            out["window_stop_free"] = max(out["window_stop_free"], frame.stop_free(start, end))
            run = run + 1 if stops == 0 else 0
            out["free_run"] = max(out["free_run"], run)
    return out


# --- feature sets ---------------------------------------------------------------------------------------------------

Features = Callable[[dict[str, int]], list[float]]
COUNTS = [*(f"stops_le_{k}" for k in range(MAX_STOPS + 1)), "stop_free_atg", "windows"]


def _logs(*keys: str) -> Features:
    return lambda f: [math.log1p(f[k]) for k in keys]


def _linear(*keys: str) -> Features:
    return lambda f: [float(f[k]) for k in keys]


TRANSCRIPT_SETS: dict[str, Features] = {
    "log length": _logs("length"),
    "log longest stop-free stretch (3 frames, no ATG needed)": _logs("stop_free"),
    "log longest stop-free stretch + log length": _logs("stop_free", "length"),
    "log longest ATG ORF (longest_orf)": _logs("orf"),
    "log longest ATG ORF + log length": _logs("orf", "length"),
}
WINDOW_SETS: dict[str, Features] = {
    "stop-free windows + all windows, linear (sum pooling)": _linear("stops_le_0", "windows"),
    "stop-free windows + all windows, log": _logs("stops_le_0", "windows"),
    "windows with 0/≤1/≤2/≤3 stops, 0 stops + ATG, all windows, linear (sum pooling)": _linear(*COUNTS),
    "windows with 0/≤1/≤2/≤3 stops, 0 stops + ATG, all windows, log": _logs(*COUNTS),
    "any stop-free window (max pooling)": lambda f: [float(f["stops_le_0"] > 0)],
    "log max in-window ATG ORF": _logs("window_orf"),
    "log max in-window stop-free stretch": _logs("window_stop_free"),
    "log max in-window ATG ORF + stop-free stretch": _logs("window_orf", "window_stop_free"),
    "log longest run of stop-free windows in a frame": _logs("free_run"),
}


def score(train: list[list[float]], y_train: list[int], test: list[list[float]], y_test: list[int]) -> dict:
    """Test accuracy and AUROC of a scaled logistic regression fit on ``train`` (binary labels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
    model.fit(train, y_train)
    positive = model.predict_proba(test)[:, 1]
    auroc = roc_auc_score([y == model.classes_[1] for y in y_test], positive) if len(set(y_test)) == 2 else None
    return {
        "features": len(train[0]),
        "accuracy": float(accuracy_score(y_test, model.predict(test))),
        "auroc": None if auroc is None else float(auroc),
    }


def score_sets(
    sets: dict[str, Features], raw: dict[str, list[dict[str, int]]], labels: dict[str, list[int]]
) -> dict[str, dict]:
    """Every feature set of ``sets`` scored on the per-sequence numbers ``raw`` (train / test)."""
    return {
        name: score([make(f) for f in raw["train"]], labels["train"], [make(f) for f in raw["test"]], labels["test"])
        for name, make in sets.items()
    }


# --- the run --------------------------------------------------------------------------------------------------------


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"128:64,256:128"`` → ``[(128, 64), (256, 128)]`` (window and step in codons; 0 < step ≤ window)."""
    settings = []
    for item in text.split(","):
        window, _, step = item.strip().partition(":")
        w, s = int(window), int(step)
        if not 0 < s <= w:
            raise argparse.ArgumentTypeError(f"{item!r}: the step must be above 0 and at most the window")
        settings.append((w, s))
    return settings


def _three(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def table_rows(window: Any, step: Any, results: dict[str, dict]) -> list[str]:
    """Markdown table lines for one group of results."""
    return [
        f"| {window} | {step} | {name} | {r['features']} | {r['accuracy']:.3f} | {_three(r['auroc'])} |"
        for name, r in results.items()
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Compute every ceiling, print the table as it goes, write the JSON; returns the record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output")
    parser.add_argument(
        "--windows",
        type=parse_windows,
        default=list(DEFAULT_WINDOWS),
        help="window settings WINDOW:STEP in codons, comma-separated (default "
        + ",".join(f"{w}:{s}" for w, s in DEFAULT_WINDOWS)
        + ")",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"the first {QUICK_ROWS['train']} train / {QUICK_ROWS['test']} test rows"
    )
    args = parser.parse_args(argv)

    began = time.perf_counter()
    sequences: dict[str, list[str]] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        rows = read_jsonl(args.data / f"{split}.jsonl")
        rows = rows[: QUICK_ROWS[split]] if args.quick else rows
        sequences[split] = [r["sequence"] for r in rows]
        labels[split] = [r["label"] for r in rows]
    record: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "data": str(args.data.resolve()),
        "quick": args.quick,
        "rows": {split: len(seqs) for split, seqs in sequences.items()},
        "settings": [{"window": w, "step": s, "overlap": w - s} for w, s in args.windows],
        "model": {"scaler": "StandardScaler", "classifier": "LogisticRegression", "C": C, "max_iter": MAX_ITER},
        "units": "lengths in nucleotides (whole transcript) or codons (in-window); every log is log1p",
        "load_start": loadavg(),
    }

    print("| " + " | ".join(TABLE_HEADERS) + " |\n|" + " --- |" * len(TABLE_HEADERS), flush=True)
    whole = {split: [transcript_features(s) for s in seqs] for split, seqs in sequences.items()}
    record["whole_transcript"] = score_sets(TRANSCRIPT_SETS, whole, labels)
    print("\n".join(table_rows("whole", "—", record["whole_transcript"])), flush=True)

    frames = {split: [[FrameIndex(c) for c in frame_codons(s)] for s in seqs] for split, seqs in sequences.items()}
    record["windows"] = []
    for window, step in args.windows:
        raw = {split: [window_features(f, window, step) for f in frames[split]] for split in frames}
        record["windows"].append(
            {
                "window": window,
                "step": step,
                "overlap": window - step,
                "windows": {split: sum(f["windows"] for f in values) for split, values in raw.items()},
                "results": score_sets(WINDOW_SETS, raw, labels),
            }
        )
        print("\n".join(table_rows(window, step, record["windows"][-1]["results"])), flush=True)
        record["elapsed_s"] = time.perf_counter() - began
        write_json(args.out, record)  # after every setting: a run cut short keeps what it measured

    record["elapsed_s"] = time.perf_counter() - began
    record["load_end"] = loadavg()
    write_json(args.out, record)
    print(f"\nwrote {args.out} ({record['elapsed_s']:.0f} s)", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
