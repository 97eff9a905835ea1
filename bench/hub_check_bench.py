"""How long ``visionthink.hf.check_available`` takes to accept or refuse a model: a local folder, a model missing
from the cache with Hub access off, a Hub that refuses the connection, and a Hub that accepts it and never answers
(where the probe gives up after its ``timeout``). The tests assert what these cases do (no request, one request, the
message); how long they take is measured here.

    python -m bench.hub_check_bench [--repeats 5]   # prints the section for BENCHMARKS.md

Nothing leaves the machine: the Hub endpoints are local ports (``tests.support.ports``), the folder is the tiny
random Qwen2.5-VL (``visionthink.tiny``) and the cache an empty temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from bench import timing

SECTION = "## Checking that a model is available (CPU)"
SILENT_TIMEOUTS = (0.5, 1.0, 2.0)


def case(name: str, check: Callable[[], None], repeats: int) -> str:
    """The table row of ``repeats`` calls of ``check``: wall times, and how the last call ended."""
    from visionthink.hf import ModelUnavailable

    def outcome() -> str:
        try:
            check()
        except ModelUnavailable as exc:
            return str(exc).split(". ")[0].replace("|", "/")
        return "accepted"

    runs = [timing.timed(outcome) for _ in range(repeats)]
    return f"| {name} | {timing.cells([ms for _, ms in runs])} | {runs[-1][0]} |"


def rows(workdir: Path, repeats: int) -> list[str]:
    import huggingface_hub.constants

    from tests.support.ports import SilentServer, refused_url
    from visionthink import hf
    from visionthink.tiny import build_tiny_model

    folder = build_tiny_model(workdir / "tiny", seed=0)
    huggingface_hub.constants.HF_HUB_CACHE = str(workdir / "hub")  # empty: nothing is cached
    missing = "visionthink-bench/not-cached"
    os.environ["HF_HUB_OFFLINE"] = "1"
    found = [case("local folder (the tiny model)", lambda: hf.check_available(str(folder)), repeats),
             case("not cached, HF_HUB_OFFLINE=1", lambda: hf.check_available(missing), repeats)]
    del os.environ["HF_HUB_OFFLINE"]
    huggingface_hub.constants.HF_HUB_OFFLINE = False
    os.environ["HF_ENDPOINT"] = refused_url()
    found.append(case("not cached, the Hub refuses the connection",
                      lambda: hf.check_available(missing, timeout=3.0), repeats))
    for timeout in SILENT_TIMEOUTS:
        with SilentServer() as silent:
            os.environ["HF_ENDPOINT"] = silent.url
            found.append(case(f"not cached, the Hub never answers (timeout {timeout:g} s)",
                              lambda t=timeout: hf.check_available(missing, timeout=t), repeats))
    return found


def section(repeats: int, measured: str) -> str:
    with tempfile.TemporaryDirectory(prefix="hub-check-bench-") as workdir:
        table = rows(Path(workdir), repeats)
    return "\n".join([
        SECTION, "",
        f"{measured} huggingface_hub {version('huggingface_hub')}. `hf.check_available` called {repeats} times per "
        "case in one process (imports done before), wall time per call.", "",
        "| Case | Median (ms) | min–max (ms) | Outcome |",
        "|---|---:|---:|---|",
        *table,
    ]) + "\n"


if __name__ == "__main__":
    sys.exit(timing.main("bench.hub_check_bench", __doc__, 5, section))
