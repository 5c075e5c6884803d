"""Detection of DNA/RNA/protein columns: the format detection, the inspect service, the CLI and the UI text."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from studio.datasets.formats import detect_format
from studio.sequences.alphabet import classify_values, detect_sequence_column


def random_sequences(letters, n=30, length=120, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(letters) for _ in range(length)) for _ in range(n)]


def test_dna_with_n_and_iupac_is_dna():
    rows = random_sequences("ACGT")
    rows[0] = "N" * 40 + rows[0][40:]
    rows[1] = rows[1][:50] + "RYKM" + rows[1][54:]
    rows[2] = rows[2].lower()  # soft-masked
    kind, share = classify_values(rows)
    assert kind == "dna" and share == 1.0


def test_rna_and_protein():
    assert classify_values(random_sequences("ACGU"))[0] == "rna"
    assert classify_values(random_sequences("ACDEFGHIKLMNPQRSTVWY"))[0] == "protein"


@pytest.mark.parametrize(
    "values",
    [
        ["the cat sat on the mat and then it went home again"] * 20,  # prose
        ["Attacca"] * 20,  # short words
        ["CATTLEFARMINGREPORTFORTHESECONDQUARTER"] * 20,  # upper-case letters, not mostly ACGT
        ["x1", "y2"] * 10,
        [],
    ],
)
def test_text_is_not_a_sequence(values):
    assert classify_values(values) is None


def test_detect_format_reports_the_sequence_column_and_proposal():
    rows = [{"id": f"t{i}", "sequence": s, "label": i % 2} for i, s in enumerate(random_sequences("ACGT"))]
    detection = detect_format(["id", "sequence", "label"], rows)
    assert detection.format == "classification"
    assert detection.mapping == {"text": "sequence", "label": "label"}
    assert detection.sequence_kind == "dna"
    assert detection.sequence["column"] == "sequence"
    assert (detection.sequence["tokenizer"], detection.sequence["k"]) == ("kmer", 3)
    assert detection.to_dict()["sequence_kind"] == "dna"


def test_plain_text_datasets_have_no_sequence(samples_dir):
    rows = [json.loads(line) for line in (samples_dir / "sst2" / "train.jsonl").read_text().splitlines()[:200]]
    detection = detect_format(list(rows[0]), rows)
    assert detection.sequence is None and detection.sequence_kind is None


def test_prefer_mapped_column():
    rows = [{"a": s, "b": p} for s, p in zip(random_sequences("ACGT"), random_sequences("MKVLWY"), strict=True)]
    assert detect_sequence_column(["a", "b"], rows).kind == "dna"
    assert detect_sequence_column(["a", "b"], rows, prefer="b").kind == "protein"


def test_inspect_counts_letters_over_every_row(tmp_path, settings, registry, samples_dir):
    from studio.services.datasets import SAMPLE_ROWS, DatasetService

    rows = [{"sequence": s, "label": i % 2} for i, s in enumerate(random_sequences("ACGT", n=SAMPLE_ROWS + 20))]
    rows[-1]["sequence"] = "NNNN" + rows[-1]["sequence"]  # beyond the detection sample
    path = tmp_path / "seqs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    service = DatasetService(registry, settings)
    found = service.inspect(path, mapping={"text": "sequence", "label": "label"})
    assert found.detection.sequence["report"]["letters"] == {"N": 4}
    assert found.detection.sequence["report"]["rows_with_ambiguous"] == 1
    added = service.add(path, mapping={"text": "sequence", "label": "label"})
    assert added.report["sequence"]["kind"] == "dna"


def test_cli_inspect_and_datasets_tab_show_the_sequences(settings, samples_dir, monkeypatch):
    from studio.cli.dataset import dataset

    sample = samples_dir / "lncrna_athaliana" / "test.jsonl"
    result = CliRunner().invoke(dataset, ["inspect", str(sample)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sequences: column 'sequence' holds DNA sequences" in result.output
    # The sample's one N (see its SOURCE.md) is reported.
    assert "letters: 'N' ×1 (ambiguous); rows with ambiguity codes: 1" in result.output

    from app.tab_datasets import inspect_file
    from studio.cli.common import services

    out = inspect_file(services(), str(sample))
    assert "holds DNA sequences" in out["detected"] and "'N' ×1" in out["detected"]
