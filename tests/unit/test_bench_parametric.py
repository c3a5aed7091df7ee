"""``memos bench parametric``'s report (no model): the context-savings and text-vs-context tables render what the
rows hold."""

from __future__ import annotations

from memos.bench.parametric import render_markdown
from memos.models.distill import LoraConfig


def _row(recipe: str, teacher: str, recall: float, **extra: object) -> dict:
    return {"facts": 5, "recipe": recipe, "teacher": teacher, "recall_with": recall, "recall_without": 0.0,
            "held_out_recall_with": 0.5, "held_out_recall_without": 0.0, "questions": 5, "held_out_questions": 10,
            "locality_loss_without": 3.862, "locality_delta": 0.02, "steps": 33, "train_s": 40.0, "train_cpu_s": 30.0,
            "eval_s": 10.0, "adapter_bytes": 2**20, "adapter_parameters": 1000, "teacher_recall": None, **extra}


def test_savings_and_teacher_tables() -> None:
    report = {
        "environment": {"fingerprint": {"model_id": "m@0", "dtype": "float32"}, "torch": "2", "peft": "0",
                        "torch_threads": 1, "cpus": 2, "load_average_start": [1.0, 1.0, 1.0]},
        "settings": {"config": LoraConfig().model_dump(mode="json"), "seed": 0},
        "rows": [
            _row("default", "text", 0.8, savings={"questions": 5, "memory_tokens": 120, "text_prompt_tokens": 150.0,
                                                  "adapter_prompt_tokens": 40.0, "text_accuracy": 0.6,
                                                  "adapter_accuracy": 0.8}),
            _row("context", "context", 1.0, teacher_recall=1.0),
        ],
    }
    md = render_markdown(report)
    assert "| 5 | 5 | 150 | 40 | 110 | 60% | 80% |" in md
    assert "| 5 | text | 80% | 50% | +0.020 | - | 30 |" in md
    assert "| 5 | context | 100% | 50% | +0.020 | 100% | 30 |" in md


def test_training_time_per_fact_count_gives_ratios_to_the_default_and_legacy_recipes_of_the_same_size() -> None:
    report = {
        "environment": {"fingerprint": {"model_id": "m@0", "dtype": "float32"}, "torch": "2", "peft": "0",
                        "torch_threads": 1, "cpus": 2, "load_average_start": [1.0, 1.0, 1.0]},
        "settings": {"config": LoraConfig().model_dump(mode="json"), "seed": 0},
        "rows": [
            _row("default", "text", 1.0),
            _row("fast", "text", 1.0, train_s=10.0, train_cpu_s=6.0),
            _row("legacy", "text", 1.0, train_s=80.0, train_cpu_s=60.0),
            {**_row("default", "text", 1.0, train_s=100.0, train_cpu_s=80.0), "facts": 20},
        ],
    }
    md = render_markdown(report)
    assert "| 5 | default | 33 | 40 | 30 | 6.0 | 10 | 100% | 50% | +0.020 | - | 0.50x (CPU 0.50x) |" in md
    assert "| 5 | fast | 33 | 10 | 6 | 1.2 | 10 | 100% | 50% | +0.020 | 0.25x (CPU 0.20x) | 0.12x (CPU 0.10x) |" in md
    assert "| 20 | default | 33 | 100 | 80 | 4.0 | 10 | 100% | 50% | +0.020 | - | - |" in md


def test_legacy_sizes_must_be_among_the_sizes() -> None:
    import pytest

    from memos.bench.parametric import run_parametric_bench

    with pytest.raises(ValueError, match="legacy sizes"):
        run_parametric_bench("/nonexistent", (20,), host=None, compare_legacy=True, legacy_sizes=(5,))  # type: ignore[arg-type]
