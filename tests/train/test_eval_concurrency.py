"""``python -m train.evaluate --concurrency N`` against a real chat-completions server on 127.0.0.1.

The server (tests/support/chat_server.py) serves the deterministic model of tests/support/scripted_vlm.py, so the
answers depend only on each request: a run with episodes in flight must give the same per-item results as one
episode at a time, survive being killed, and resume to exactly one line per item and mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.chat_server import ChatServer
from tests.support.scripted_vlm import MODEL, scripted_visionthink, write_cards
from train import evaluate as ev
from train.judge import RuleJudge
from train.report import SUMMARY_JSON
from visionthink.backends import OpenAIBackend, TransformersBackend
from visionthink.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
CARDS = 12
EPISODES = CARDS * 3  # every card in auto, low and high
#: What a result holds that must not depend on how many episodes ran at once (latency and time stamps do).
COMPARED = ("answer", "verdict", "requested_high_res", "stop_reason", "turns", "turn_kinds", "tokens", "error",
            "judge", "kind", "question", "reference", "solution", "settings", "model")


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    return write_cards(tmp_path_factory.mktemp("cards") / "cards", CARDS)


@pytest.fixture(autouse=True)
def clean_visionthink_env(monkeypatch):
    """No VISIONTHINK_* setting of the calling shell (judge, model, concurrency) leaks into these runs."""
    for name in list(os.environ):
        if name.startswith("VISIONTHINK_"):
            monkeypatch.delenv(name)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_key(path: Path) -> dict[tuple[str, str], dict]:
    rows = lines(path)
    keyed = {(r["item"], r["mode"]): {name: r[name] for name in COMPARED} for r in rows}
    assert len(keyed) == len(rows), "an item and mode appear twice"
    return keyed


def argv(server: ChatServer, cards: Path, out: Path, *extra: str) -> list[str]:
    return ["--backend", "openai", "--base-url", server.base_url, "--model", MODEL, "--data", str(cards),
            "--judge", "rule", "--out", str(out), "--no-progress", *extra]


def first_turn(body: dict) -> bool:
    return not any(m.get("role") == "assistant" for m in body["messages"])


class Gate:
    """A responder that answers the first ``open_episodes`` episodes in full, then holds every later episode's first
    request until ``release()``; it counts the episodes started (first requests) in ``started``."""

    def __init__(self, open_episodes: int) -> None:
        self.open_episodes = open_episodes
        self.started = 0
        self._lock = threading.Lock()
        self._released = threading.Event()

    def __call__(self, body: dict) -> str:
        if first_turn(body):
            with self._lock:
                self.started += 1
                held = self.started > self.open_episodes
            if held and not self._released.wait(60):
                raise RuntimeError("the test never released the gate")
        return scripted_visionthink(body)

    def release(self) -> None:
        self.open_episodes = 10**9
        self._released.set()


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTHINK_")}
    return subprocess.Popen([sys.executable, "-m", "train.evaluate", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_four_in_flight_give_the_same_results_as_one_at_a_time_and_really_overlap(cards, tmp_path, capsys):
    with ChatServer(scripted_visionthink, model=MODEL) as server:
        assert ev.main(argv(server, cards, tmp_path / "one")) == 0
        assert server.max_in_flight == 1  # one at a time really is one at a time
    sequential_table = capsys.readouterr().out

    # The first four episodes are answered only once all four have arrived: a run that did not overlap them would
    # wait in vain (the barrier breaks, the server answers 500 and those episodes fail).
    barrier = threading.Barrier(4, timeout=30)
    lock = threading.Lock()
    arrivals = []

    def together(body: dict) -> str:
        with lock:
            arrivals.append(body)
            first_four = len(arrivals) <= 4
        if first_four:
            barrier.wait()
        return scripted_visionthink(body)

    with ChatServer(together, model=MODEL, token_delay_s=0.002) as server:
        assert ev.main(argv(server, cards, tmp_path / "four", "--concurrency", "4")) == 0
        assert server.max_in_flight == 4  # never more than the engine's four slots
    concurrent_table = capsys.readouterr().out

    sequential, concurrent = by_key(tmp_path / "one" / ev.RESULTS_FILE), by_key(tmp_path / "four" / ev.RESULTS_FILE)
    assert len(sequential) == EPISODES and concurrent == sequential
    assert all(r["error"] is None for r in concurrent.values())
    assert {r["requested_high_res"] for r in concurrent.values()} == {True, False}  # both paths were taken

    one = json.loads((tmp_path / "one" / SUMMARY_JSON).read_text())
    four = json.loads((tmp_path / "four" / SUMMARY_JSON).read_text())
    assert (one["run"]["concurrency"], four["run"]["concurrency"]) == (1, 4)
    assert four["run"]["episodes_run"] == EPISODES and four["run"]["episodes_per_s"] > 0

    def without_latency(summary: dict) -> dict:
        return {mode: {k: v for k, v in s.items() if not k.startswith("latency")} for mode, s in summary.items()}

    assert without_latency(four["modes"]) == without_latency(one["modes"])
    assert four["modes"]["auto"]["high_res_requests"] == 4  # cards 0, 3, 6, 9 need the full image
    strip = [line for line in sequential_table.splitlines() if line.startswith(("auto ", "low ", "high "))]
    assert [line.split()[:7] for line in strip] == [
        line.split()[:7] for line in concurrent_table.splitlines() if line.startswith(("auto ", "low ", "high "))]


def test_a_run_killed_mid_way_resumes_without_redoing_finished_episodes_or_duplicating_lines(cards, tmp_path):
    out = tmp_path / "out"
    results = out / ev.RESULTS_FILE
    gate = Gate(open_episodes=6)
    with ChatServer(gate, model=MODEL) as server:
        process = start_cli(argv(server, cards, out, "--concurrency", "4"))
        try:
            # Six episodes finished and written, four more held at the server mid-episode: kill it there.
            wait_for(lambda: results.exists() and len(results.read_text().splitlines()) == 6
                     and server.in_flight == 4, "six results and four requests in flight")
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            gate.release()
        assert process.returncode == -signal.SIGKILL
        killed = lines(results)
        assert len(killed) == 6 and results.read_text().endswith("\n")
        started_before = gate.started  # 10: six finished, four killed in flight

        resumed = start_cli(argv(server, cards, out, "--concurrency", "4"))
        stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert gate.started - started_before == EPISODES - 6  # the six finished episodes did not run again

    final = lines(results)  # every line is whole JSON
    assert len(final) == EPISODES and len({(r["item"], r["mode"]) for r in final}) == EPISODES
    assert final[:6] == killed and all(r["error"] is None for r in final)
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["run"]["reused"] == 6 and summary["run"]["episodes_run"] == EPISODES - 6
    assert summary["run"]["unreadable_lines"] == 0

    # The same per-item results as a run of the whole set one episode at a time.
    with ChatServer(scripted_visionthink, model=MODEL) as server:
        assert ev.main(argv(server, cards, tmp_path / "reference")) == 0
    assert by_key(results) == by_key(tmp_path / "reference" / ev.RESULTS_FILE)


def test_ctrl_c_writes_the_episodes_in_flight_before_it_stops(cards, tmp_path):
    out = tmp_path / "out"
    results = out / ev.RESULTS_FILE
    gate = Gate(open_episodes=6)
    with ChatServer(gate, model=MODEL) as server:
        process = start_cli(argv(server, cards, out, "--concurrency", "4"))
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
        reader.start()
        try:
            wait_for(lambda: results.exists() and len(results.read_text().splitlines()) == 6
                     and server.in_flight == 4, "six results and four requests in flight")
            process.send_signal(signal.SIGINT)
            wait_for(lambda: any("Stopping" in line for line in stderr), "the message that it is stopping")
            gate.release()  # the four held episodes now finish
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
            gate.release()
        reader.join(10)
        assert gate.started == 10  # nothing new started after Ctrl-C
    assert process.returncode == ev.EXIT_INTERRUPTED
    text = "".join(stderr)
    assert "finishing the 4 episodes in flight" in text and "run the same command again to resume" in text
    assert "Traceback" not in text
    written = lines(results)
    assert len(written) == 10 and len({(r["item"], r["mode"]) for r in written}) == 10
    assert all(r["error"] is None for r in written)


def test_more_than_one_in_flight_is_refused_with_the_transformers_backend(cards, tmp_path, monkeypatch, capsys,
                                                                         tiny_model_dir):
    monkeypatch.setattr(ev, "load_engine", lambda *a, **k: pytest.fail("no model is loaded for a refused run"))
    out = tmp_path / "out"
    code = ev.main(["--backend", "transformers", "--model", str(tiny_model_dir), "--data", str(cards),
                    "--judge", "rule", "--out", str(out), "--concurrency", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ev.EXIT_BAD_INPUT and len(err) == 1
    assert err[0].startswith("error: --concurrency 4 needs --backend openai") and "leave --concurrency at 1" in err[0]
    assert not out.exists()

    assert ev.main(["--data", str(cards), "--concurrency", "0"]) == ev.EXIT_BAD_INPUT
    assert "--concurrency must be at least 1, not 0" in capsys.readouterr().err

    # The library refuses too: an engine on the local model, whatever its slots.
    from visionthink.hf import load_model, load_processor

    backend = TransformersBackend(load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir)),
                                  "tiny")
    with pytest.raises(ev.EvalError, match="needs --backend openai"):
        ev.evaluate(Engine(backend, max_concurrent=4), ev.load_items(cards), judge=RuleJudge(), out_dir=out,
                    concurrency=4)
    assert not out.exists()


def test_a_library_engine_with_fewer_slots_than_the_concurrency_is_refused(cards, tmp_path):
    with ChatServer(scripted_visionthink, model=MODEL) as server:
        engine = Engine(OpenAIBackend(server.base_url, MODEL), max_concurrent=2)
        with pytest.raises(ev.EvalError, match="max_concurrent=8"):
            ev.evaluate(engine, ev.load_items(cards), judge=RuleJudge(), out_dir=tmp_path / "out", concurrency=8)
        assert server.requests == [] and not (tmp_path / "out").exists()


def _table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's rows in ``text``, its header first."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows]


def test_the_throughput_benchmark_quick_mode_runs_and_reports_every_concurrency():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTHINK_")}
    result = subprocess.run([sys.executable, "-m", "bench.eval_throughput", "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("## Evaluation throughput\n") and "Measured " in text and " UTC with " in text
    header, *cells = _table_rows(text)
    assert header[0] == "Episodes in flight (N)" and len(cells) == 2
    assert [row[0] for row in cells] == ["1", "4"]
    for row in cells:
        assert float(row[1]) > 0 and row[3].endswith("×") and float(row[5]) > 0
        assert int(row[7]) >= 12 and row[8] == "1"
    assert [int(row[6]) for row in cells] == [1, 4]  # the server saw as many requests at once as N
    assert "were identical for every N: yes" in text


def test_the_throughput_benchmark_measures_a_server_already_running():
    """``--base-url`` sends the episodes to a server that is already up (``vllm serve`` on a GPU); here the test's
    own chat server, which counts what reached it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTHINK_")}
    with ChatServer(scripted_visionthink, model=MODEL, token_delay_s=0.002, chunk_size=12) as server:
        base_url = server.base_url
        result = subprocess.run([sys.executable, "-m", "bench.eval_throughput", "--quick", "--base-url", base_url,
                                 "--model", MODEL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert server.max_in_flight == 4 and len(server.requests) >= 24  # both runs' episodes reached it
    text = result.stdout
    assert text.startswith("## Evaluating against a running server\n")
    assert "{" not in text and "}" not in text  # every figure filled in
    assert f"--base-url {base_url} --model {MODEL}`" in text and "already running" in text
    cells = _table_rows(text)[1:]
    assert [row[0] for row in cells] == ["1", "4"] and all(float(row[1]) > 0 for row in cells)
    assert [row[6] for row in cells] == ["–", "–"]  # a server it did not start does not say how many it held
    assert "were identical for every N: yes" in text


def test_the_throughput_benchmark_wants_a_model_name_with_a_server():
    result = subprocess.run([sys.executable, "-m", "bench.eval_throughput", "--base-url", "http://127.0.0.1:9/v1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--base-url and --model go together" in result.stderr
