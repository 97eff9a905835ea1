"""Score the stored answers that people rated with an automatic judge, so the dashboard can show how often the
judge agrees with them (agreement rate and Cohen's kappa, per model version).

    python -m train.score_store [--judge rule|llm|env] [--db URL] [--rejudge]

Each answer with a complete human consensus is judged against the consensus reference answer; the verdicts are
stored beside the ratings (a failed judgement is stored as failed, never as 0 or 1).
"""

from __future__ import annotations

import argparse
import logging
import sys

from store.api import Actor, Store
from store.db import StoreError
from train.judge import make_judge
from visionthink.settings import Settings, SettingsError


def score_store(store: Store, judge, *, rejudge: bool = False) -> tuple[int, int]:
    """Judge every rated answer the judge has not scored yet; returns (scored, failed)."""
    actor = Actor.system()
    targets = store.judge_targets(actor, judge.name, rejudge=rejudge)
    verdicts = judge.score_many([(t.question, t.reference_answer, t.prediction) for t in targets])
    for target, verdict in zip(targets, verdicts, strict=True):
        store.record_judgement(actor, target.ask_id, judge.name, verdict, target.reference_answer)
    return len(targets), sum(1 for v in verdicts if v is None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.score_store", description=__doc__.splitlines()[0])
    parser.add_argument("--judge", choices=("rule", "llm", "env"), default="env",
                        help="rule: offline matching; llm: the paper's judge (VISIONTHINK_JUDGE_*); env: VISIONTHINK_JUDGE")
    parser.add_argument("--db", help="database URL (default VISIONTHINK_DB_URL)")
    parser.add_argument("--rejudge", action="store_true", help="score answers this judge has already scored again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env()
        judge = make_judge(args.judge, settings)
        store = Store(args.db or settings.db_url, ratings_per_item=settings.ratings_per_item)
    except (SettingsError, StoreError) as exc:  # a JudgeError is a SettingsError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        scored, failed = score_store(store, judge, rejudge=args.rejudge)
        print(f"Judged {scored} rated answers with {judge.name} ({failed} judgements failed).")
        for row in store.dashboard(Actor.system()).agreement:
            if row.judge != judge.name:
                continue
            kappa = "—" if row.kappa is None else f"{row.kappa:.3f}"
            rate = "—" if row.agreement is None else f"{row.agreement:.1%}"
            version = f"{row.model_id}@{row.revision}" if row.revision else row.model_id
            print(f"  {version}: {row.items} answers, agreement {rate}, Cohen's kappa {kappa}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
