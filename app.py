"""VisionThink Studio: the entry point (`python app.py`, `make run`, and the Hugging Face Spaces `app_file`).

Settings come from environment variables (README lists them); the model loads in the background while the page
is already up.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.examples import ensure_examples
from app.model_slot import ModelSlot
from app.ui import build_demo, launch_kwargs
from visionthink.loader import load_engine
from visionthink.settings import Settings


def create_demo(settings: Settings | None = None):
    settings = settings or Settings.from_env()
    slot = ModelSlot(lambda progress: load_engine(settings, progress)).start()
    return build_demo(slot, ensure_examples())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    demo = create_demo()
    demo.queue(max_size=int(os.environ.get("VISIONTHINK_QUEUE_SIZE", "32"))).launch(**launch_kwargs())


if __name__ == "__main__":
    main()
