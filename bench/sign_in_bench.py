"""How long refusing a sign-in takes for a configured user's wrong password and for a name that does not exist
(``store.users.Directory.check_password``, what the studio's login form calls). The two should take the same time,
or the refusal tells who has an account; the tests check that both compute the same scrypt hash, this measures it.

    python -m bench.sign_in_bench [--repeats 20]   # prints the section for BENCHMARKS.md

Known and unknown names are refused in turn, so other work on the machine slows both alike.
"""

from __future__ import annotations

import statistics
import sys

from bench import timing

SECTION = "## Refusing a sign-in (CPU)"


def section(repeats: int, measured: str) -> str:
    from store.users import Directory, UserEntry, hash_password

    directory = Directory([UserEntry("ada", "annotator", hash_password("ada-password"))])
    directory.check_password("nobody", "wrong")  # makes the decoy hash, once per process
    names = {"a configured user, wrong password": "ada", "a name that does not exist": "nobody"}
    ms: dict[str, list[float]] = {kind: [] for kind in names}
    for _ in range(repeats):
        for kind, name in names.items():
            accepted, took = timing.timed(lambda n=name: directory.check_password(n, "wrong"))
            if accepted:
                raise SystemExit(f"{name} signed in with a wrong password: nothing to measure")
            ms[kind].append(took)
    known, unknown = (statistics.median(times) for times in ms.values())
    return "\n".join([
        SECTION, "",
        f"{measured} `Directory.check_password` refusing {repeats} times each, interleaved.", "",
        "| Refused | Median (ms) | min–max (ms) |",
        "|---|---:|---:|",
        *(f"| {kind} | {timing.cells(times)} |" for kind, times in ms.items()),
        "", f"An unknown name takes {unknown / known:.2f}× the time of a configured one.",
    ]) + "\n"


if __name__ == "__main__":
    sys.exit(timing.main("bench.sign_in_bench", __doc__, 20, section))
