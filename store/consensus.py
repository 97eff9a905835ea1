"""How several people's ratings of one answer become one judgement (the rule the dataset card states).

1. Each rater counts once: their latest annotation rating. An admin's resolution, when there is one, decides
   outright and ends any dispute.
2. Verdict: the raters who said "correct" or "incorrect" must all agree; "unsure" abstains. The item needs
   ``required`` raters before it has a consensus at all.
3. Reference answer: every rater who judged the answer and gave a reference must give the same one, compared
   after normalising case, spacing and a trailing full stop.
4. Needs the full image: a label only when at least ``required`` raters chose a decision other than "unsure"
   and all of them chose the same one.

An item whose raters disagree on the verdict or the reference is *disputed* until an admin resolves it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    """The part of a rating the consensus looks at."""

    rater: str
    source: str  # annotation | thumbs | resolution
    verdict: str  # correct | incorrect | unsure
    reference_answer: str | None
    decision: str | None
    order: int  # later ratings have larger values (the row id)


@dataclass(frozen=True)
class Consensus:
    raters: int
    verdict: str | None  # correct | incorrect | None (no consensus yet, or disputed)
    reference_answer: str | None
    needs_high_res: bool | None
    disputed: bool
    resolved: bool

    @property
    def complete(self) -> bool:
        return self.verdict is not None and not self.disputed


def normalise(answer: str | None) -> str:
    """Case-, space- and final-full-stop-insensitive form used to compare reference answers."""
    return re.sub(r"\s+", " ", (answer or "").strip().lower()).rstrip(" .")


def latest_per_rater(votes: Iterable[Vote], source: str = "annotation") -> list[Vote]:
    latest: dict[str, Vote] = {}
    for vote in sorted(votes, key=lambda v: v.order):
        if vote.source == source:
            latest[vote.rater] = vote
    return list(latest.values())


def consensus(votes: Iterable[Vote], required: int) -> Consensus:
    votes = list(votes)
    resolutions = latest_per_rater(votes, "resolution")
    ratings = latest_per_rater(votes, "annotation")
    if resolutions:
        final = max(resolutions, key=lambda v: v.order)
        return Consensus(
            raters=len(ratings),
            verdict=final.verdict if final.verdict != "unsure" else None,
            reference_answer=(final.reference_answer or "").strip() or None,
            needs_high_res=_decision_label([final], 1),
            disputed=False,
            resolved=True,
        )

    judged = [v for v in ratings if v.verdict in ("correct", "incorrect")]
    verdicts = {v.verdict for v in judged}
    references = {normalise(v.reference_answer): v.reference_answer.strip() for v in judged if normalise(v.reference_answer)}
    disputed = len(verdicts) > 1 or len(references) > 1
    enough = len(ratings) >= required and bool(judged)
    verdict = verdicts.pop() if enough and not disputed and verdicts else None
    reference = None
    if verdict is not None and references:
        # The original spelling of the most recent rater who gave this (normalised) answer.
        reference = next(v.reference_answer.strip() for v in sorted(judged, key=lambda v: -v.order)
                         if normalise(v.reference_answer))
    return Consensus(
        raters=len(ratings),
        verdict=verdict,
        reference_answer=reference,
        needs_high_res=_decision_label(ratings, required),
        disputed=disputed,
        resolved=False,
    )


def _decision_label(votes: list[Vote], required: int) -> bool | None:
    decisions = [v.decision for v in votes if v.decision in ("needed_full", "low_enough")]
    if len(decisions) < required or len(set(decisions)) != 1:
        return None
    return decisions[0] == "needed_full"
