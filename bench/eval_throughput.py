"""Evaluation throughput against a model server: episodes per second with 1, 4, 16 and 64 episodes in flight
(``python -m train.evaluate --backend openai --concurrency N``), measured side by side in one run.

    python -m bench.eval_throughput [--repeats 3] [--token-delay 0.02] [--write]   # --write updates BENCHMARKS.md
    python -m bench.eval_throughput --quick     # a few seconds: N = 1 and 4 on a few items, for CI (no timings kept)
    python -m bench.eval_throughput --base-url http://127.0.0.1:8000/v1 --model NAME   # a server already running

The server is ``tests/support/chat_server.py`` in its own process, speaking the OpenAI chat-completions protocol
over 127.0.0.1 and serving the deterministic model of ``tests/support/scripted_vlm.py``. It streams every reply at a
fixed time per generated token and answers any number of requests at once, as a server that batches them would, so
the figures show what the evaluation loop makes of a server's throughput, not the server's own limits. Each run
also checks that every N gives the same per-item results; the command fails when they differ.

With ``--base-url`` and ``--model`` the episodes go to an OpenAI-compatible server that is already running instead,
such as ``vllm serve`` on a GPU (``VISIONTHINK_MAX_NEW_TOKENS`` bounds its turns). Its count of requests in flight
is not known then, and a server that batches requests may choose other tokens for one request among many (its
arithmetic changes with the batch), so per-item results that differ between N are reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Evaluation throughput"
SERVER_SECTION = "## Evaluating against a running server"  # --base-url: kept apart from the scripted one
CONCURRENCY = (1, 4, 16, 64)
QUICK_CONCURRENCY = (1, 4)
#: The fields of a result that must not depend on how many episodes ran at once (latency and time stamps do).
COMPARED = ("answer", "verdict", "requested_high_res", "stop_reason", "turn_kinds", "tokens", "error")


# --- The server, in its own process ----------------------------------------------------------------------------


def serve(token_delay_s: float) -> int:
    """Serve the scripted model until stdin closes; print the base URL first and the server's counts last."""
    from tests.support.chat_server import ChatServer
    from tests.support.scripted_vlm import MODEL, scripted_visionthink

    # chunk_size 12: about one streamed chunk per whitespace-separated piece, the unit the token delay is paid in.
    with ChatServer(scripted_visionthink, model=MODEL, token_delay_s=token_delay_s, chunk_size=12) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()
        print(json.dumps({"requests": len(server.requests), "max_in_flight": server.max_in_flight}), flush=True)
    return 0


@contextlib.contextmanager
def served(token_delay_s: float) -> Iterator[tuple[str, dict]]:
    """A fresh server process; yields its base URL and a dict that holds its counts once the block ends."""
    process = subprocess.Popen([sys.executable, "-m", "bench.eval_throughput", "--serve",
                                "--token-delay", str(token_delay_s)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    counts: dict = {}
    try:
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"The benchmark's server did not start (it said {base_url!r}).")
        yield base_url, counts
        process.stdin.close()
        counts.update(json.loads(process.stdout.readline()))
    finally:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- One measurement -------------------------------------------------------------------------------------------


def measure(concurrency: int, items, token_delay_s: float, out_dir: Path,
            external: tuple[str, str] | None = None) -> dict:
    """One evaluation of ``items`` in every mode with ``concurrency`` episodes in flight, against a fresh server of
    the scripted model, or the ``external`` (base URL, model) one already running."""
    from tests.support.scripted_vlm import MODEL
    from train.evaluate import RESULTS_FILE, evaluate
    from train.judge import RuleJudge
    from visionthink.loader import load_engine
    from visionthink.settings import Settings

    server_of = contextlib.nullcontext((external[0], {})) if external else served(token_delay_s)
    with server_of as (base_url, server):
        settings = Settings(backend="openai", base_url=base_url, model=external[1] if external else MODEL,
                            model_concurrency=concurrency)
        engine = load_engine(settings, progress=lambda message: None)  # the command line's path
        report = evaluate(engine, items, judge=RuleJudge(), out_dir=out_dir, progress=False, concurrency=concurrency)
        engine.backend.client.close()
    results = {}
    for line in (out_dir / RESULTS_FILE).read_text().splitlines():
        row = json.loads(line)
        results[f"{row['item']}/{row['mode']}"] = {name: row[name] for name in COMPARED}
    run = report.run
    return {"concurrency": concurrency, "episodes": run["episodes_run"], "failed": run["episodes_failed"],
            "wall_s": run["episodes_wall_s"], "episodes_per_s": run["episodes_per_s"],
            "client_cpu_cores": run["episodes_cpu_s"] / run["episodes_wall_s"],
            "client_cpu_ms_per_episode": 1000 * run["episodes_cpu_s"] / run["episodes_run"],
            "server_max_in_flight": server.get("max_in_flight"),
            "server_requests": server.get("requests"), "results": results}


def episodes_for(concurrency: int, minimum: int, per_slot: int) -> int:
    """Enough episodes that every slot runs several, so the start and the tail of a run weigh little."""
    return max(minimum, per_slot * concurrency)


def run(concurrencies: tuple[int, ...], repeats: int, token_delay_s: float, minimum: int, per_slot: int,
        workdir: Path, external: tuple[str, str] | None = None) -> list[dict]:
    from tests.support.scripted_vlm import write_cards
    from train.evaluate import load_items

    largest = max(episodes_for(n, minimum, per_slot) for n in concurrencies)
    data = write_cards(workdir / "cards", math.ceil(largest / 3))
    runs = []
    for repeat in range(repeats):
        for n in concurrencies:  # interleaved, so every N sees the same machine load
            items = load_items(data, limit=math.ceil(episodes_for(n, minimum, per_slot) / 3))
            runs.append(measure(n, items, token_delay_s, workdir / f"n{n}-run{repeat}", external))
            last = runs[-1]
            seen = last["server_max_in_flight"]
            print(f"N={n}: {last['episodes']} episodes in {last['wall_s']:.2f} s, {last['episodes_per_s']:.1f}/s"
                  + (f", server saw {seen} at once" if seen is not None else ""), file=sys.stderr)
    return runs


def disagreements(runs: list[dict]) -> list[str]:
    """The item/mode pairs whose results differ between runs (every run is compared on the pairs it has)."""
    first: dict[str, dict] = {}
    differing = []
    for measured in runs:
        for key, result in measured["results"].items():
            if first.setdefault(key, result) != result:
                differing.append(f"{key} (N={measured['concurrency']})")
    return differing


# --- The report ------------------------------------------------------------------------------------------------


def table(runs: list[dict], *, repeats: int, token_delay_s: float, minimum: int, per_slot: int,
          concurrencies: tuple[int, ...], load: tuple[float, float], external: tuple[str, str] | None = None) -> str:
    """The BENCHMARKS.md section; ``load`` is the 1-minute load average before and after the runs; ``external``
    the (base URL, model) of a server that was already running."""
    from bench.grpo_bench import _machine, _version

    rate = {n: statistics.median(r["episodes_per_s"] for r in runs if r["concurrency"] == n) for n in concurrencies}
    base = rate[min(concurrencies)]
    compared = len({key for r in runs for key in r["results"]})
    differing = disagreements(runs)
    lines = [
        SERVER_SECTION if external else SECTION, "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python -m bench.eval_throughput"
        + (f" --base-url {external[0]} --model {external[1]}" if external else "") + f"` on "
        f"{_machine()}. Python {platform.python_version()}, openai {_version('openai')}.", "",
        "`train.evaluate --backend openai --concurrency N` (the library call behind it, with the engine the command "
        "line builds) against "
        + (f"the OpenAI-compatible server at {external[0]} serving `{external[1]}`, already running. Card questions, "
           "one in three needing the full image, in all three modes, turns as long as the model writes them"
           if external else
           "a local OpenAI-compatible server in its own process (`tests/support/chat_server.py`) serving a scripted "
           f"VisionThink model (`tests/support/scripted_vlm.py`) that streams each reply at {token_delay_s * 1000:g} "
           "ms per generated token and answers any number of requests at once. Card questions, one in three needing "
           "the full image, in all three modes (1–2 turns of 7–15 tokens per episode)")
        + ", judged by the rule judge, each result written and synced to `results.jsonl` as it finishes. "
        f"max({minimum}, {per_slot} × N) episodes per run, {repeats} run(s) per N, the N interleaved; medians over "
        "the runs. Client CPU: the evaluating process's CPU time (all its threads) over the wall time of its "
        f"episodes, and per episode; the server's process is apart. The 1-minute load average was {load[0]:.1f} "
        "before the runs and "
        f"{load[1]:.1f} after"
        + (" (the benchmark's own two processes count in the second)" if not external else "")
        + (": other jobs were running as it started, so the figures at large N are lower bounds."
           if load[0] >= os.cpu_count() / 2 else "."),
        "",
        "| Episodes in flight (N) | Episodes/s, median | min–max | Speed-up over N = 1 | Client CPU (cores) "
        "| Client CPU per episode (ms) | Most requests in flight at the server | Episodes per run | Runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in concurrencies:
        mine = [r for r in runs if r["concurrency"] == n]
        rates = [r["episodes_per_s"] for r in mine]
        lines.append(
            f"| {n} | {rate[n]:.1f} | {min(rates):.1f}–{max(rates):.1f} | {rate[n] / base:.1f}× | "
            f"{statistics.median(r['client_cpu_cores'] for r in mine):.2f} | "
            f"{statistics.median(r['client_cpu_ms_per_episode'] for r in mine):.1f} | "
            f"{_most_in_flight(mine)} | {mine[0]['episodes']} | {len(mine)} |")
    top = max(concurrencies)
    busy = statistics.median(r["client_cpu_cores"] for r in runs if r["concurrency"] == top)
    lines += [
        "",
        f"With {top} episodes in flight the evaluation ran {rate[top] / base:.1f}× as many episodes per second as one "
        f"at a time (ideal, bound by latency alone: {top}×), measured side by side in this run.",
    ]
    if busy >= 0.8 and not external:  # one Python process runs Python code on about one core at a time
        per_episode = statistics.median(r["client_cpu_ms_per_episode"] for r in runs if r["concurrency"] == top)
        lines.append(
            f"There the evaluating process was busy {busy:.2f} cores, {per_episode:.0f} ms of CPU per episode: one "
            f"Python process runs Python code on about one core at a time, so on this machine the client, not the "
            f"server, set the limit. Turns of a real model are hundreds of tokens, not 7–15, so against a real "
            f"server the same client keeps far more episodes in flight before it is the limit.")
    lines += [
        "",
        ("Per-item results (answer, verdict, full-image request, stop reason, turns, visual tokens) were identical "
         f"for every N: yes, {compared} item/mode pairs compared." if not differing else
         f"Per-item results were identical for every N: NO, {len(differing)} of {compared} item/mode pairs differ, "
         f"e.g. {', '.join(differing[:5])}"
         + (" (a server that batches requests may choose other tokens for one request among many)." if external else
            ".")),
    ]
    return "\n".join(lines) + "\n"


def _most_in_flight(runs: list[dict]) -> str:
    """The most requests the server saw at once over ``runs``, or "–" where the server did not say."""
    seen = [r["server_max_in_flight"] for r in runs if r["server_max_in_flight"] is not None]
    return str(max(seen)) if seen else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs per N (default 3).")
    parser.add_argument("--token-delay", type=float, default=0.02,
                        help="Seconds per generated token at the server (default 0.02: 50 tokens/s per sequence).")
    parser.add_argument("--min-episodes", type=int, default=48, help="Episodes per run at least (default 48).")
    parser.add_argument("--episodes-per-slot", type=int, default=8, help="Episodes per run per slot (default 8).")
    parser.add_argument("--quick", action="store_true",
                        help="N = 1 and 4, 12 episodes, 2 ms per token, one run: checks the code path, times nothing.")
    parser.add_argument("--write", action="store_true", help="Put the section in BENCHMARKS.md.")
    parser.add_argument("--base-url", help="An OpenAI-compatible server already running (e.g. vllm serve's "
                        "http://127.0.0.1:8000/v1) instead of the scripted one; needs --model.")
    parser.add_argument("--model", help="The model name that server serves (with --base-url).")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.token_delay)
    if bool(args.base_url) != bool(args.model):
        parser.error("--base-url and --model go together: the server's address and the model name it serves.")
    external = (args.base_url, args.model) if args.base_url else None
    if args.quick and args.write:
        parser.error("--quick figures are not benchmarks; run without --quick to --write.")
    concurrencies = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    repeats, token_delay = (1, 0.002) if args.quick else (args.repeats, args.token_delay)
    minimum, per_slot = (12, 3) if args.quick else (args.min_episodes, args.episodes_per_slot)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        runs = run(concurrencies, repeats, token_delay, minimum, per_slot, Path(tmp), external)
    text = table(runs, repeats=repeats, token_delay_s=token_delay, minimum=minimum, per_slot=per_slot,
                 concurrencies=concurrencies, load=(load_before, os.getloadavg()[0]), external=external)
    print(text)
    differing = disagreements(runs)
    if differing and not external:
        print(f"error: per-item results depend on the concurrency ({len(differing)} differ).", file=sys.stderr)
        return 1
    failed = sum(r["failed"] for r in runs)
    if failed:
        print(f"error: {failed} episodes failed (see the messages above); the figures would not measure answers.",
              file=sys.stderr)
        return 1
    if args.write:
        from bench.grpo_bench import write_section

        write_section(text, SERVER_SECTION if external else SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
