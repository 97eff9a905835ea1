"""Time and peak memory of ``load_image`` on 7000×7000 uploads (a float32 TIFF, a 16-bit greyscale PNG and, as
the reference, an 8-bit RGB PNG), and of refusing them at a 1 MP limit, for the code before and after strip-wise
scaling, side by side in one run.

    python -m bench.image_bench              # 3 runs per case; prints the section
    python -m bench.image_bench --write      # and puts it in BENCHMARKS.md

"Before" is ``visionthink/images.py`` as committed at ``--before`` (default: the last commit without the
strip-wise scaling), "after" the working tree's. Every measurement is a fresh process that imports one of the two
files, reads the file and calls ``load_image`` once; its peak RSS is the process's VmHWM, imports included.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Loading large images (CPU)"
SIDE = 7000
RGB_BYTES = SIDE * SIDE * 3  # the final RGB image
REFUSAL_LIMIT = 1_000_000
#: The last commit whose images.py scaled wide greyscale images as whole float64/int64 copies.
BEFORE = "ed7d7f9"
CASES = {
    "float32 TIFF (deflate)": "float.tif",
    "16-bit grey PNG": "grey16.png",
    "8-bit RGB PNG (reference)": "rgb8.png",
}


# --- The files -------------------------------------------------------------------------------------------------


def make_files(folder: Path) -> dict[str, Path]:
    """The three 7000×7000 test files: smooth bands and blocks, so they are small on disk yet cover the value range."""
    import numpy as np
    from PIL import Image

    y, x = np.ogrid[:SIDE, :SIDE]
    bands = ((x // 250 + y // 500) % 32).astype(np.uint8)  # 0..31, in blocks
    paths = {name: folder / file for name, file in CASES.items()}
    Image.fromarray(bands.astype(np.float32) / 31).save(paths["float32 TIFF (deflate)"], "TIFF",
                                                        compression="tiff_adobe_deflate")
    Image.fromarray(bands.astype(np.uint16) * 2114).save(paths["16-bit grey PNG"], "PNG")
    rgb = np.stack([bands * 8, 255 - bands * 8, np.full_like(bands, 128)], axis=2)
    Image.fromarray(rgb).save(paths["8-bit RGB PNG (reference)"], "PNG")
    return paths


# --- One measurement, in a child process -----------------------------------------------------------------------


def vm_hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def child(code: Path, image: Path, max_pixels: int) -> dict:
    """Import ``code`` as the images module, load ``image`` once; time, peak RSS and a hash of the result."""
    spec = importlib.util.spec_from_file_location("bench_images", code)
    images = importlib.util.module_from_spec(spec)
    sys.modules["bench_images"] = images  # dataclasses look their module up
    spec.loader.exec_module(images)
    baseline = vm_hwm_mib()
    start = time.perf_counter()
    try:
        result = images.load_image(image, max_pixels=max_pixels)
    except images.ImageError as exc:
        seconds, peak = time.perf_counter() - start, vm_hwm_mib()
        return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline, "outcome": f"refused: {exc}"}
    seconds, peak = time.perf_counter() - start, vm_hwm_mib()
    return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline,
            "outcome": f"{result.mode} {result.size[0]}x{result.size[1]}",
            "sha256": hashlib.sha256(result.tobytes()).hexdigest()}


def measure(code: Path, image: Path, max_pixels: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.image_bench", "--child", str(code), str(image), str(max_pixels)],
        cwd=ROOT, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- Report ----------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) / 2**20
    return (f"{cpu}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {memory:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def section(results: dict[tuple[str, str, str], list[dict]], sizes: dict[str, int], before: str, repeats: int,
            load_average: float) -> str:
    rgb_mib = RGB_BYTES / 2**20
    baseline = statistics.median(r["baseline_mib"] for runs in results.values() for r in runs)
    lines = [
        SECTION, "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python -m bench.image_bench` on {machine()}. "
        f"Python {platform.python_version()}, Pillow {_version('pillow')}, numpy {_version('numpy')}, "
        f"OMP_NUM_THREADS=1. The 1-minute load average before the run was {load_average:.1f}.", "",
        f"`load_image(path)` at the default limit (50 MP) on {SIDE}×{SIDE} images, and `load_image(path, "
        f"max_pixels={REFUSAL_LIMIT:_})`, which refuses them from the header. \"Before\" is `visionthink/images.py` "
        f"at {before} (whole-image float64/int64 conversion), \"after\" the strip-wise conversion; both were "
        f"measured in this run, interleaved. Each figure is one fresh process per call, {repeats} runs, medians. "
        "Time is the `load_image` call alone (reading the file included, imports not); peak RSS is the process's "
        f"VmHWM, so it includes the interpreter with numpy and Pillow imported ({baseline:.0f} MiB before the "
        f"call). The final RGB image is {SIDE}×{SIDE}×3 bytes = {rgb_mib:.0f} MiB; \"× RGB\" is peak RSS over that.",
        "",
        "| Image | On disk | Code | Load, median (s) | min–max (s) | Peak RSS (MiB) | × RGB | Refusal at 1 MP (ms) "
        "| Refusal peak RSS (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CASES:
        for code in ("before", "after"):
            loads, refusals = results[(name, code, "load")], results[(name, code, "refuse")]
            seconds = [r["seconds"] for r in loads]
            peak = statistics.median(r["peak_mib"] for r in loads)
            lines.append(
                f"| {name} | {_size(sizes[name])} | {code} | {statistics.median(seconds):.2f} | "
                f"{min(seconds):.2f}–{max(seconds):.2f} | {peak:,.0f} | {peak / rgb_mib:.1f} | "
                f"{statistics.median(r['seconds'] for r in refusals) * 1000:.1f} | "
                f"{statistics.median(r['peak_mib'] for r in refusals):.0f} |")
    lines += [
        "", *_summary(results, rgb_mib), "",
        "After the change a wide greyscale image peaks while its decoded pixels (4 bytes a pixel for float32, 2 for "
        "16-bit: Pillow's, unavoidable) and the 8-bit grey result (1 byte a pixel) are both held, plus one strip of "
        "about 262,000 pixels in float64 or int64; the source is freed before the RGB image is made. Before, numpy "
        "made whole-image float64 or int64 copies (8 bytes a pixel, several at once). The 8-bit RGB reference path "
        "did not change: its 2.9× is the decoded image plus the copy `ImageOps.exif_transpose` returns. A refusal "
        "runs the same code before and after (read the file, parse the header); differences there are noise from "
        "other work on the machine.",
    ]
    return "\n".join(lines) + "\n"


def _summary(results: dict[tuple[str, str, str], list[dict]], rgb_mib: float) -> list[str]:
    notes = []
    for name in CASES:
        before, after = results[(name, "before", "load")], results[(name, "after", "load")]
        same = {r["sha256"] for r in before} == {r["sha256"] for r in after} and len({r["sha256"] for r in after}) == 1
        time_ratio = statistics.median(r["seconds"] for r in before) / statistics.median(r["seconds"] for r in after)
        peak_before = statistics.median(r["peak_mib"] for r in before)
        peak_after = statistics.median(r["peak_mib"] for r in after)
        notes.append(f"- {name}: load time ÷ {time_ratio:.1f}, peak {peak_before:,.0f} → {peak_after:,.0f} MiB "
                     f"({peak_before / rgb_mib:.1f}× → {peak_after / rgb_mib:.1f}× the RGB image); the RGB pixels "
                     f"before and after are {'identical' if same else 'DIFFERENT'} (SHA-256 of every run).")
    refused = all(r["outcome"].startswith("refused: The image is too large")
                  for (_, _, kind), runs in results.items() if kind == "refuse" for r in runs)
    notes.append("- Every refusal at 1 MP came from the header (\"too large\"); its peak RSS is the interpreter's."
                 if refused else "- A refusal at 1 MP was NOT the header check: see the runs.")
    return notes


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"


def write_section(text: str, path: Path) -> None:
    """Put ``text`` in ``path`` in place of this bench's section (appended when it is not there yet)."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION in current:
        start = current.index(SECTION)
        end = current.find("\n## ", start + len(SECTION))
        current = current[:start] + text.rstrip("\n") + "\n" + (current[end:] if end != -1 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.image_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case and code (default 3)")
    parser.add_argument("--before", default=BEFORE, help=f"the commit whose images.py is 'before' (default {BEFORE})")
    parser.add_argument("--write", action="store_true", help="put the section in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        code, image, max_pixels = args.child
        print(json.dumps(child(Path(code), Path(image), int(max_pixels))))
        return 0

    load_average = os.getloadavg()[0]
    before = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    results: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="visionthink-image-bench-") as tmp:
        folder = Path(tmp)
        codes = {"before": folder / "images_before.py", "after": ROOT / "visionthink" / "images.py"}
        codes["before"].write_text(subprocess.run(["git", "show", f"{before}:visionthink/images.py"], cwd=ROOT,
                                                  capture_output=True, text=True, check=True).stdout)
        print(f"making the {SIDE}×{SIDE} files", file=sys.stderr, flush=True)
        paths = make_files(folder)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
        for repeat in range(args.repeats):
            for name, path in paths.items():
                for code, module in codes.items():  # interleaved, so both see the same machine load
                    for kind, limit in (("load", 50_000_000), ("refuse", REFUSAL_LIMIT)):
                        run = measure(module, path, limit)
                        results.setdefault((name, code, kind), []).append(run)
                        print(f"run {repeat + 1}: {name:26} {code:6} {kind:6} {run['seconds']:7.3f} s "
                              f"peak {run['peak_mib']:7.0f} MiB  {run['outcome'][:40]}", file=sys.stderr, flush=True)
    text = section(results, sizes, before, args.repeats, load_average)
    print(text)
    if args.write:
        write_section(text, args.out)
        print(f"Wrote {args.out}.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
