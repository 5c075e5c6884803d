"""The Evaluate tab's comparison view, from a comparison job result (no model, no browser)."""

from __future__ import annotations

from types import SimpleNamespace

from app.tab_evaluate import comparison_table, eval_results_markdown, samples_table
from studio.charts import comparison_bars
from studio.evaluation.comparison import compare_models

MODELS = [
    {"key": "base:m", "metrics": {"eval_loss": 2.0, "exact_match": 0.0}, "truncated_answers": 2},
    {"key": "adapter:4", "metrics": {"eval_loss": 1.5, "exact_match": 0.5}, "truncated_answers": 0},
]
RESULT = {
    "models": MODELS,
    "comparison": compare_models(MODELS),
    "generated": 2,
    "max_new_tokens": 40,
    "sample_table": [
        {
            "prompt": "user: 2+3?",
            "reference": "#### 5",
            "answers": {
                "base:m": {"prediction": "2 plus", "truncated": True, "exact_match": False},
                "adapter:4": {"prediction": "#### 5", "truncated": False, "exact_match": True},
            },
        }
    ],
}


def test_comparison_table_side_by_side_with_best_delta_and_cut_offs():
    headers, rows = comparison_table(RESULT)
    assert headers == ["metric", "better", "base m", "adapter #4", "Δ adapter #4 vs base"]
    assert rows[0] == ["eval_loss", "lower", "2", "1.5 ★", "-0.5"]
    assert rows[1] == ["exact_match", "higher", "0", "0.5 ★", "+0.5"]
    assert rows[2] == ["answers cut off (40 tokens)", "lower", "2", "0", ""]


def test_columns_name_models_for_people_not_by_server_paths():
    from studio.evaluation.comparison import column_name

    assert column_name("base:/srv/studio/models/smollm2-135m-instruct") == "base smollm2-135m-instruct"
    assert column_name("base:HuggingFaceTB/SmolLM2-135M-Instruct") == "base SmolLM2-135M-Instruct"
    assert column_name("adapter:12") == "adapter #12"


def test_samples_table_shows_every_models_answer_and_score():
    headers, [row] = samples_table(RESULT)
    assert headers == ["prompt", "reference", "base m", "adapter #4"]
    assert row == ["user: 2+3?", "#### 5", "2 plus\n[exact_match 0, cut off]", "#### 5\n[exact_match 1]"]


def test_bar_chart_has_a_panel_per_metric_with_its_direction():
    figure = comparison_bars(RESULT)
    assert [a.text for a in figure.layout.annotations] == [
        "eval_loss<br>↓ lower is better",
        "exact_match<br>↑ higher is better",
    ]
    assert [list(trace.x) for trace in figure.data] == [["base m", "adapter #4"]] * 2
    assert list(figure.data[0].marker.line.width) == [0, 3]  # the best bar is outlined


def test_adapter_details_list_eval_results_by_dataset():
    row = SimpleNamespace(dataset_id=2, metric="exact_match", value=0.25, examples=8, truncated=3, max_new_tokens=40)
    text = eval_results_markdown([row])
    assert "| #2 | exact_match | 0.25 (3 cut off at 40 tokens) | 8 |" in text
    assert eval_results_markdown([]) == ""


def test_samples_table_cuts_a_sequence_to_its_start_and_length():
    """A DNA sequence has no space to wrap at: shown whole, its cell blanked the whole table in the browser."""
    sequence = "ACGT" * 300
    prose = "word " * 200
    result = {
        "models": [{"key": "adapter:1"}],
        "sample_table": [
            {"prompt": sequence, "reference": "1", "answers": {"adapter:1": {"prediction": "0", "correct": False}}},
            {"prompt": prose, "reference": "0", "answers": {"adapter:1": {"prediction": "0", "correct": True}}},
        ],
    }
    _, [dna_row, prose_row] = samples_table(result)
    assert dna_row[0] == sequence[:60] + "… (1,200 characters)"
    assert dna_row[1:] == ["1", "0\n[wrong]"]
    assert prose_row[0] == prose[:400]  # text that wraps is cut at SAMPLE_CHARS as before


def test_samples_table_shows_numeric_class_labels():
    """Labels stored as numbers (the lncRNA sample's 0 / 1) are shown, not a crash that blanks the whole view."""
    result = {
        "models": [{"key": "adapter:1", "metrics": {"accuracy": 0.5}}, {"key": "baseline:logistic-regression"}],
        "sample_table": [
            {"prompt": "ACGT" * 150, "reference": 1, "answers": {"adapter:1": {"prediction": 0, "correct": False}}}
        ],
    }
    headers, [row] = samples_table(result)
    assert headers == ["prompt", "reference", "adapter #1", "baseline logistic-regression"]
    assert row == [("ACGT" * 150)[:60] + "… (600 characters)", "1", "0\n[wrong]", ""]
