"""``python -m visionthink.miniature sample|probe``: draw a split of the task, or measure its premise.

    python -m visionthink.miniature sample --n 300 --seed 7 --out data/miniature/test
    python -m visionthink.miniature probe [--train 1500] [--test 900] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionthink.miniature", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="Write a split in VisionThink's schema (save_to_disk folder).")
    sample.add_argument("--n", type=int, required=True, help="number of items (the kinds in turn)")
    sample.add_argument("--seed", type=int, required=True, help="the split's seed")
    sample.add_argument("--out", required=True, help="folder to write")
    probe = commands.add_parser("probe", help="Train a CNN probe per resolution; print what it reads per kind.")
    probe.add_argument("--train", type=int, default=1500, help="training items (default 1500)")
    probe.add_argument("--test", type=int, default=900, help="held-out items (default 900)")
    probe.add_argument("--seed", type=int, default=0, help="seed of both splits and of the probe (default 0)")
    args = parser.parse_args(argv)

    if args.command == "sample":
        if args.n < 1:
            parser.error("--n must be at least 1")
        from visionthink.miniature.data import write_split

        out = write_split(args.n, args.seed, args.out)
        print(f"Wrote {args.n} items (seed {args.seed}) to {out}")
        return 0

    from visionthink.miniature import probe as premise

    result = premise.measure(args.train, args.test, args.seed)
    print(result.table())
    failures = result.failures()
    print(f"({result.train_items} training and {result.test_items} held-out items, {result.seconds:.0f} s)")
    if failures:
        print("The premise does NOT hold: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("The premise holds: every kind is legible at full resolution; at 1/4 colour and shape are, the pattern is not.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
