"""The (model, B, N) grid shared by measurements 1 and 5."""

from __future__ import annotations

from benchmarks.presets import Preset


def model_cases(preset: Preset) -> list[tuple[str, int, int]]:
    """MLP and conv-net cases, every batch at every N, plus the preset's extra cases."""
    cases = [("mlp", b, n) for n in preset.steps for b in preset.mlp_batches]
    cases += [("conv", b, n) for n in preset.steps for b in preset.conv_batches]
    cases += [c for c in preset.extra_cases if c not in cases]
    return cases
