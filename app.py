"""VisionThink Studio: the entry point (`python app.py`, `make run`, and the Hugging Face Spaces `app_file`).

Settings come from environment variables (README lists them); the model loads in the background while the page
is already up.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The app's own folder for Gradio's files (uploads, images shown): its housekeeping deletes old files there, which
# it must not do in a folder other Gradio apps on the machine share.
os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(tempfile.gettempdir(), "visionthink-gradio"))

from app.server import serve  # noqa: E402
from store.db import StoreError  # noqa: E402
from visionthink.settings import Settings, SettingsError  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        serve(Settings.from_env())
    except (SettingsError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
