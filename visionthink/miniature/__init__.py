"""VisionThink in miniature: a synthetic task where the 1/4 image is enough for some questions and not for others,
and a Qwen2.5-VL small enough to train on two CPU cores that learns, by the project's own GRPO, when to ask for
the full image (``task``, ``turns``, ``model``, ``probe``; the recipe is ``train.miniature``)."""
