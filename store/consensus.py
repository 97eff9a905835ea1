"""How several people's ratings of one answer become one judgement (the rule the dataset card states).

1. Each rater counts once: their latest annotation rating. A rater who withdrew their rating (undid it, and has
   not rated the answer again since) does not count at all. An admin's resolution, when there is one, decides
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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

#: The verdict of a withdrawal: a rater took back their earlier ratings of an answer (ratings are append-only, so an
#: undo is a row too). It is no judgement: it is never counted, shown or exported, and neither is what it took back.
WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class Vote:
    """The part of a rating the consensus looks at."""

    rater: str
    source: str  # annotation | thumbs | resolution
    verdict: str  # correct | incorrect | unsure | withdrawn
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
    """Each rater's latest vote from ``source``; a rater whose latest is a withdrawal has none."""
    latest: dict[str, Vote] = {}
    for vote in sorted(votes, key=lambda v: v.order):
        if vote.source == source:
            latest[vote.rater] = vote
    return [vote for vote in latest.values() if vote.verdict != WITHDRAWN]


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


@dataclass(frozen=True)
class Majority:
    """What most raters chose, for an admin to start a resolution from; None where nobody chose, or where the top
    choices tie."""

    verdict: str | None
    reference_answer: str | None
    decision: str | None


def majority(votes: Iterable[Vote]) -> Majority:
    """Each rater's latest annotation counts once. The verdict and the decision are the choice made by more raters
    than any other; the reference answer likewise, among the raters who judged the answer (correct or incorrect) and
    gave one, compared after normalising, in the spelling of the latest rater who gave it."""
    ratings = sorted(latest_per_rater(votes), key=lambda v: v.order)
    judged = [v for v in ratings if v.verdict in ("correct", "incorrect") and normalise(v.reference_answer)]
    reference = _plurality([normalise(v.reference_answer) for v in judged])
    return Majority(
        verdict=_plurality([v.verdict for v in ratings]),
        reference_answer=None if reference is None else next(
            v.reference_answer.strip() for v in reversed(judged) if normalise(v.reference_answer) == reference),
        decision=_plurality([v.decision for v in ratings if v.decision]),
    )


def _plurality(values: list[str]) -> str | None:
    ranked = Counter(values).most_common(2)
    if not ranked or len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def _decision_label(votes: list[Vote], required: int) -> bool | None:
    decisions = [v.decision for v in votes if v.decision in ("needed_full", "low_enough")]
    if len(decisions) < required or len(set(decisions)) != 1:
        return None
    return decisions[0] == "needed_full"
