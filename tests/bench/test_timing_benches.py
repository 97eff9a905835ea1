"""The benches that hold timings tests used to assert run, and report each case they measure. No timing is
asserted: the figures belong in BENCHMARKS.md."""

from __future__ import annotations

from tests.bench.test_engine_bench import _run


def _table(module: str, *options: str) -> list[list[str]]:
    """The body rows of the table ``module`` prints, as lists of cells."""
    done = _run(module, *options, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("## ") and f"`python -m {module}`" in done.stdout
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")]
            for line in done.stdout.splitlines() if line.startswith("| ")]
    assert all(all(row) for row in rows), rows
    return rows[1:]  # the header left out


def test_hub_check_bench_measures_every_way_check_available_ends():
    outcomes = [row[-1] for row in _table("bench.hub_check_bench", "--repeats", "1")]
    assert len(outcomes) == 6 and outcomes[0] == "accepted" and "Hub access is off" in outcomes[1]
    assert "could not be reached (ConnectError" in outcomes[2]
    assert all("Hugging Face Hub" in outcome for outcome in outcomes[3:])  # gave up on the silent Hub


def test_sign_in_bench_measures_both_refusals():
    rows = _table("bench.sign_in_bench", "--repeats", "2")
    assert [row[0] for row in rows] == ["a configured user, wrong password", "a name that does not exist"]


def test_judge_parse_bench_measures_each_reply_at_each_size():
    rows = _table("bench.judge_parse_bench", "--repeats", "1")
    assert len(rows) == 6 and all(len(row) == 4 for row in rows)
