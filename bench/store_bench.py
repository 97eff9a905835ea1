"""How fast the ratings store takes ratings from concurrent annotators, and how long an export of 10,000 rated
answers takes, on SQLite (a file) and PostgreSQL, measured side by side in one run.

    python -m bench.store_bench            # 5 repeats, 10,000 items to export; writes BENCHMARKS.md
    python -m bench.store_bench --quick    # 1 repeat, 1,000 items; prints only unless --write

PostgreSQL is ``VISIONTHINK_TEST_PG_URL`` when set, else a throwaway server started from Debian's binaries with
its default (durable) settings. Every run checks that no rating was lost or doubled.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from store.api import Actor, Store
from store.db import FairLock
from tests.support.postgres import ENV_URL, check_reachable, fresh_database, postgres_admin_url
from visionthink import protocol
from visionthink.engine import Answer, TurnRecord
from visionthink.images import TokenReport

WRITERS = (1, 8, 32)
LOCKS = {"threading.Lock (before)": threading.Lock, "store.db.FairLock": FairLock}
ASKS = 8  # stored answers the writers rate, round robin
IMAGE_SIZE = (128, 128)  # random pixels: about 49 KB per PNG
TARGET = {"writers": 32, "ratings_per_s": 500, "p99_ms": 100}
SECTION = "## Store: ratings and export"
SYSTEM = Actor.system()


@dataclass(frozen=True)
class WriteRun:
    backend: str
    writers: int
    ratings: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_s(self) -> float:
        return self.ratings / self.seconds


@dataclass(frozen=True)
class ExportRun:
    backend: str
    items: int
    rows: int
    read_s: float  # iterating store.rated_asks alone
    export_s: float  # store.export.export(..., "grpo", ...)


# --- Databases -------------------------------------------------------------------------------------------------


class Databases:
    """Fresh empty databases per backend: SQLite files in ``tmp``, or new databases on one PostgreSQL server."""

    def __init__(self, backends: list[str], tmp: Path, stack: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.count = 0
        self.pg_admin = stack.enter_context(postgres_admin_url(durable=True)) if "postgresql" in backends else None

    @contextlib.contextmanager
    def fresh(self, backend: str) -> Iterator[str]:
        if backend == "postgresql":
            with fresh_database(self.pg_admin) as url:
                yield url
            return
        self.count += 1
        path = self.tmp / f"bench-{self.count}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# --- Ratings ---------------------------------------------------------------------------------------------------


def answer(question: str) -> Answer:
    turn = TurnRecord(index=0, turn=protocol.parse_turn(protocol.answer_turn_text("It reads 44.6.", "44.6")),
                      latency_s=0.5, generated_tokens=8, finish_reason="stop", prompt_tokens=200, image_tokens=[64])
    return Answer(question=question, mode="auto", model="bench/model", turns=[turn], final_answer="44.6",
                  requested_high_res=False, tokens=TokenReport.build(low_res=64, high_res=0, full_res=256),
                  latency_s=0.5, stop_reason="answer", original_size=IMAGE_SIZE)


def image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def measure_writes(url: str, backend: str, writers: int, total: int, lock: Callable[[], object] | None = None
                   ) -> WriteRun:
    """``writers`` threads, each its own annotator, add ``total`` ratings between them through ``Store.rate``.

    ``lock`` replaces the SQLite write lock (to compare ``threading.Lock`` with ``store.db.FairLock``).
    """
    store = Store(url)
    if lock is not None:
        store.db._write_lock = lock()
    try:
        asks = [store.record(answer(f"question {i}"), image(i), SYSTEM, consent=True) for i in range(ASKS)]
        each = total // writers
        latencies: list[list[float]] = [[] for _ in range(writers)]
        ids: list[list[int]] = [[] for _ in range(writers)]
        start = threading.Barrier(writers + 1)

        def write(w: int) -> None:
            actor = Actor(f"annotator-{w}", "annotator")
            start.wait()
            for i in range(each):
                t0 = time.perf_counter()
                ids[w].append(store.rate(actor, asks[(w + i) % ASKS], verdict="correct", comment=f"{w}:{i}"))
                latencies[w].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        start.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - t0

        written = writers * each
        all_ids = [i for batch in ids for i in batch]
        stored = store.dashboard(SYSTEM).ratings
        if len(all_ids) != written or len(set(all_ids)) != written or stored != written:
            raise SystemExit(f"{backend}, {writers} writers: {written} ratings sent, {len(set(all_ids))} distinct ids "
                             f"returned, {stored} stored. Ratings were lost or doubled.")
        samples = np.array([x for batch in latencies for x in batch]) * 1000
        return WriteRun(backend, writers, written, seconds, float(np.percentile(samples, 50)),
                        float(np.percentile(samples, 99)))
    finally:
        store.close()


# --- Export ----------------------------------------------------------------------------------------------------


def populate(store: Store, items: int) -> None:
    """``items`` consented answers, each with its own image and two agreeing annotations with a reference."""
    bob, carol = Actor("bob", "annotator"), Actor("carol", "annotator")
    for i in range(items):
        ask = store.record(answer(f"What is shown in picture {i}?"), image(10_000 + i), SYSTEM, consent=True)
        for rater in (bob, carol):
            store.rate(rater, ask, verdict="incorrect", reference_answer=f"reading {i}", decision="needed_full")


def measure_export(url: str, backend: str, items: int, repeats: int, out_root: Path) -> list[ExportRun]:
    from store.export import export

    store = Store(url)
    try:
        t0 = time.perf_counter()
        populate(store, items)
        print(f"  {backend}: stored {items} rated answers in {time.perf_counter() - t0:.1f} s", flush=True)
        runs = []
        for repeat in range(repeats):
            t0 = time.perf_counter()
            count = sum(1 for _ in store.rated_asks(SYSTEM))
            read_s = time.perf_counter() - t0
            assert count == items, f"rated_asks gave {count} of {items} items"
            out = out_root / f"{backend}-{repeat}"
            t0 = time.perf_counter()
            result = export(store, SYSTEM, "grpo", out)
            export_s = time.perf_counter() - t0
            if result.rows != items:
                raise SystemExit(f"{backend}: the export has {result.rows} rows, expected {items} ({result.skipped}).")
            runs.append(ExportRun(backend, items, result.rows, read_s, export_s))
            print(f"  {backend}: read {read_s:.2f} s, export {export_s:.2f} s", flush=True)
        return runs
    finally:
        store.close()


# --- Report ----------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"Model name:\s*(.+)", lscpu)
        cpu = found.group(1).strip() if found else cpu
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    import psycopg
    import sqlalchemy

    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))})",
        "ram": f"{mem_kb / 2**20:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def median(values) -> float:
    return statistics.median(list(values))


def write_table(runs: list[WriteRun], backends: list[str]) -> list[str]:
    lines = ["| Database | Writers | Ratings/s | p50 latency (ms) | p99 latency (ms) | Ratings per run | "
             "Runs | Ratings/s of SQLite's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for writers in WRITERS:
        sqlite_rate = None
        for backend in backends:
            mine = [r for r in runs if r.backend == backend and r.writers == writers]
            if not mine:
                continue
            rate = median(r.per_s for r in mine)
            sqlite_rate = rate if backend == "sqlite" else sqlite_rate
            ratio = f"{rate / sqlite_rate:.2f}×" if sqlite_rate and backend != "sqlite" else "–"
            lines.append(f"| {_label(backend)} | {writers} | {rate:,.0f} | {median(r.p50_ms for r in mine):.2f} | "
                         f"{median(r.p99_ms for r in mine):.2f} | {mine[0].ratings:,} | {len(mine)} | {ratio} |")
    return lines


def lock_table(runs: dict[tuple[int, str], list[WriteRun]]) -> list[str]:
    lines = ["| Writers | SQLite write lock | Ratings/s | p50 latency (ms) | p99 latency (ms) | Runs |",
             "|---:|---|---:|---:|---:|---:|"]
    for (writers, name), mine in runs.items():
        lines.append(f"| {writers} | {name} | {median(r.per_s for r in mine):,.0f} | "
                     f"{median(r.p50_ms for r in mine):.2f} | {median(r.p99_ms for r in mine):.2f} | {len(mine)} |")
    return lines


def export_table(runs: list[ExportRun], backends: list[str]) -> list[str]:
    lines = ["| Database | Rated items (with images) | GRPO export (s) | Items/s | Reading the items alone (s) "
             "| Runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for backend in backends:
        mine = [r for r in runs if r.backend == backend]
        if mine:
            seconds = median(r.export_s for r in mine)
            lines.append(f"| {_label(backend)} | {mine[0].items:,} | {seconds:.1f} | {mine[0].items / seconds:,.0f} | "
                         f"{median(r.read_s for r in mine):.1f} | {len(mine)} |")
    return lines


def _label(backend: str) -> str:
    return {"sqlite": "SQLite (file, WAL)", "postgresql": "PostgreSQL"}[backend]


def target_verdict(runs: list[WriteRun]) -> tuple[bool, str]:
    mine = [r for r in runs if r.backend == "sqlite" and r.writers == TARGET["writers"]]
    if not mine:
        return False, "not measured"
    rate, p99 = median(r.per_s for r in mine), median(r.p99_ms for r in mine)
    met = rate >= TARGET["ratings_per_s"] and p99 < TARGET["p99_ms"]
    return met, (f"{'met' if met else 'MISSED'}: {rate:,.0f} ratings/s (target ≥ {TARGET['ratings_per_s']}), "
                 f"p99 {p99:.1f} ms (target < {TARGET['p99_ms']} ms), none lost")


def report(info: dict[str, str], write_runs: list[WriteRun], lock_runs: dict[tuple[int, str], list[WriteRun]],
           export_runs: list[ExportRun], backends: list[str], args: argparse.Namespace) -> str:
    _, verdict = target_verdict(write_runs)
    lines = [
        SECTION, "",
        f"Measured {info['date']} with `python -m bench.store_bench{' --quick' if args.quick else ''}` on "
        f"{info['cpu']}, {info['ram']} RAM ({info['os']}). Python {info['python']}, SQLAlchemy {info['sqlalchemy']}, "
        f"psycopg {info['psycopg']}, SQLite {info['sqlite']}, PostgreSQL {info.get('postgresql', '–')} "
        f"({info.get('postgresql_setup', '–')}). Both databases were measured in the same run, interleaved. "
        f"The 1-minute load average before the run was {info['load']}: other work on the machine shows up as "
        "noise, hence the medians.",
        "",
        "### Ratings",
        "",
        f"`Store.rate` called from 1, 8 and 32 threads at once, each thread its own annotator, over {ASKS} stored "
        "answers, on a fresh database per run. Ratings/s is all ratings over the wall time from the common start "
        "to the last one; latency is per call as the caller sees it (waiting for the write lock or a pooled "
        "connection included). Every run checks that each rating was stored exactly once. Medians over the runs. "
        "Each database runs as shipped, so durability differs: SQLite in WAL mode with synchronous=NORMAL does not "
        "sync each commit to disk (a power cut can lose the last commits, never corrupt the file), PostgreSQL "
        "syncs every commit.",
        "",
        *write_table(write_runs, backends),
        "",
        f"Target (SQLite, 32 writers: at least {TARGET['ratings_per_s']} ratings/s with p99 under "
        f"{TARGET['p99_ms']} ms, none lost): **{verdict}**.",
        "",
    ]
    if lock_runs:
        lines += [
            "SQLite writes from threads of one process queue on a lock in `store.db` (SQLite has one writer at a "
            "time). With `threading.Lock` a thread that has just written can take the lock straight back, so under "
            "load some writers wait through dozens of others' writes; `store.db.FairLock` hands it over in arrival "
            "order. The same measurement with each lock, interleaved in this run; only the lock differs. A low p50 "
            "with a high p99 is the sign of the unfair lock: most writes go straight through, a few wait for "
            "many others.",
            "",
            *lock_table(lock_runs),
            "",
        ]
    if export_runs:
        lines += [
            "### Export",
            "",
            f"{export_runs[0].items:,} consented answers, each with its own {IMAGE_SIZE[0]}×{IMAGE_SIZE[1]} image "
            "(random pixels, about 49 KB as PNG) and two agreeing annotations with a reference answer, exported with "
            "`store.export.export(store, Actor.system(), \"grpo\", out)` (one row per answer). \"Reading the items "
            "alone\" iterates `Store.rated_asks` without writing anything. Medians over the runs.",
            "",
            *export_table(export_runs, backends),
            "",
        ]
    return "\n".join(lines)


def update_benchmarks(path: Path, section: str) -> None:
    """Replace this bench's section of ``path`` (or append it), leaving other sections alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1,000 export items; prints, writes nothing "
                        "unless --write.")
    parser.add_argument("--repeats", type=int, help="runs per setting (default 5, or 1 with --quick)")
    parser.add_argument("--ratings", type=int, help="ratings per run (default 1,600, or 320 with --quick)")
    parser.add_argument("--export-items", type=int,
                        help="rated items to export (default 10,000, or 1,000 with --quick; 0: no export)")
    parser.add_argument("--export-repeats", type=int, help="exports per database (default 3, or 1 with --quick)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--write", action="store_true", help="write the results into --out (default without --quick)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    total = args.ratings or (320 if args.quick else 1600)
    items = args.export_items if args.export_items is not None else (1000 if args.quick else 10_000)
    export_repeats = args.export_repeats or (1 if args.quick else 3)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(backends) - {"sqlite", "postgresql"}:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; use sqlite and/or postgresql")

    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "load": f"{os.getloadavg()[0]:.1f}"}
    write_runs: list[WriteRun] = []
    lock_runs: dict[tuple[int, str], list[WriteRun]] = {}
    export_runs: list[ExportRun] = []
    with tempfile.TemporaryDirectory(prefix="visionthink-bench-") as tmp, contextlib.ExitStack() as stack:
        dbs = Databases(backends, Path(tmp), stack)
        if dbs.pg_admin:
            info["postgresql"] = check_reachable(dbs.pg_admin)
            info["postgresql_setup"] = ("the server at VISIONTHINK_TEST_PG_URL" if os.environ.get(ENV_URL) else
                                        "a throwaway cluster on 127.0.0.1 with the default settings: fsync and "
                                        "synchronous_commit on")
        print(f"ratings: {total} per run, {repeats} runs, writers {WRITERS}", flush=True)
        for repeat in range(repeats):  # interleaved, so both databases see the same machine conditions
            for writers in WRITERS:
                for backend in backends:
                    with dbs.fresh(backend) as url:
                        run = measure_writes(url, backend, writers, total)
                    write_runs.append(run)
                    print(f"  run {repeat + 1}: {backend:10} {writers:2} writers  {run.per_s:8,.0f}/s  "
                          f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms", flush=True)
        if "sqlite" in backends and not args.quick:
            print("SQLite write lock, before and after", flush=True)
            for repeat in range(repeats):
                for writers in WRITERS[1:]:
                    for name, lock in LOCKS.items():
                        with dbs.fresh("sqlite") as url:
                            run = measure_writes(url, "sqlite", writers, total, lock)
                        lock_runs.setdefault((writers, name), []).append(run)
                        print(f"  run {repeat + 1}: {name:24} {writers:2} writers  {run.per_s:8,.0f}/s  "
                              f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms", flush=True)
        if items:
            print(f"export: {items} items, {export_repeats} runs", flush=True)
            for backend in backends:
                with dbs.fresh(backend) as url:
                    export_runs += measure_export(url, backend, items, export_repeats, Path(tmp) / "exports")
    section = report(info, write_runs, lock_runs, export_runs, backends, args)
    print()
    print(section)
    if args.write or not args.quick:
        update_benchmarks(args.out, section)
        print(f"\nWrote {args.out}.")
    return 0 if target_verdict(write_runs)[0] or "sqlite" not in backends else 1


if __name__ == "__main__":
    sys.exit(main())
