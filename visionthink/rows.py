"""VisionThink's dataset row (spec §7), written by store exports and the miniature's sampler, read by ``train/``.

A row holds ``problem`` (the question with ``<image>``), ``images`` (one image, the original), ``original_answer``
(the judge's reference), ``solution`` (the rule judge's), ``needs_high_res`` (whether the full image is needed,
when known), ``data_source`` and ``doc_id``. A writer may add columns (the miniature adds ``kind``).
"""

from __future__ import annotations

import datasets

FEATURES = datasets.Features({
    "problem": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "original_answer": datasets.Value("string"),
    "solution": datasets.Value("string"),
    "needs_high_res": datasets.Value("bool"),
    "data_source": datasets.Value("string"),
    "doc_id": datasets.Value("string"),
})


def features(**extra: datasets.features.features.FeatureType) -> datasets.Features:
    """The row's features with ``extra`` columns after them."""
    return datasets.Features({**FEATURES, **extra})
