"""What the training tests share: the tiny model they train (built once) and a recorder of what TRL scored."""

from __future__ import annotations

import pytest
import torch

#: The training tests' images: 16 visual tokens at full resolution, 56x56 (4 tokens) at 1/4.
FULL = (112, 112)


@pytest.fixture(scope="session")
def train_model_dir(tmp_path_factory):
    """The tiny random Qwen2.5-VL with the pixel limit of ``FULL``, written once for every training test."""
    from visionthink.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-train"), seed=1, max_pixels=FULL[0] * FULL[1])


def record_batches(trainer) -> list[dict]:
    """Keep a copy of every batch the trainer generates and scores (completion ids, masks, advantages, …)."""
    batches: list[dict] = []
    original = trainer._generate_and_score_completions

    def record(inputs):
        output = original(inputs)
        batches.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in output.items()})
        return output

    trainer._generate_and_score_completions = record
    return batches
