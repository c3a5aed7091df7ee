"""The default distillation recipe chooses by the number of facts (docs/parametric.md, "third pass"): from
FAST_FROM_FACTS facts up the top-layer, packed, bf16 recipe; below it the recipe before; a field a caller sets is
kept as set. No model."""

from __future__ import annotations

from memos.models.distill import FAST_FROM_FACTS, FAST_TOP_LAYERS, LEGACY_RECIPE, LoraConfig
from memos.types import DistillRecipe


def _chosen(config: LoraConfig, facts: int) -> tuple:
    c = config.for_facts(facts)
    return c.top_layers, c.pack, c.dtype


def test_the_default_recipe_is_chosen_by_the_number_of_facts() -> None:
    assert _chosen(LoraConfig(), FAST_FROM_FACTS - 1) == (1.0, False, "float32")
    assert _chosen(LoraConfig(), FAST_FROM_FACTS) == (FAST_TOP_LAYERS, True, "bfloat16")
    assert _chosen(LoraConfig(), 100) == (FAST_TOP_LAYERS, True, "bfloat16")


def test_fields_a_caller_sets_are_kept() -> None:
    assert _chosen(LoraConfig(top_layers=1.0, pack=False, dtype="float32"), 50) == (1.0, False, "float32")
    assert _chosen(LoraConfig(top_layers=0.5), 3) == (0.5, False, "float32")
    assert LEGACY_RECIPE.for_facts(100) == LEGACY_RECIPE  # the old recipe stays what it was
    # A policy's recipe overrides the host's default recipe with the fields it sets, pack included.
    overrides = DistillRecipe(top_layers=1.0, pack=False, dtype="float32").overrides()
    assert _chosen(LoraConfig(**overrides), 40) == (1.0, False, "float32")
    assert _chosen(LoraConfig(**DistillRecipe().overrides()), 40) == (FAST_TOP_LAYERS, True, "bfloat16")
