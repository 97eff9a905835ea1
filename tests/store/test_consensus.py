"""The consensus rule on hand-built votes: no database, just the rule the dataset card states."""

from __future__ import annotations

import itertools

import pytest

from store.consensus import WITHDRAWN, Vote, consensus, latest_per_rater, normalise

_order = itertools.count(1)


def vote(rater: str, verdict: str, reference: str | None = None, decision: str | None = None, *,
         source: str = "annotation", order: int | None = None) -> Vote:
    return Vote(rater, source, verdict, reference, decision, next(_order) if order is None else order)


def test_agreeing_raters_give_a_verdict_and_reference() -> None:
    result = consensus([vote("bob", "incorrect", "44.6"), vote("carol", "incorrect", "44.6")], required=2)
    assert (result.verdict, result.reference_answer, result.raters) == ("incorrect", "44.6", 2)
    assert not result.disputed and not result.resolved and result.complete


def test_too_few_raters_give_no_verdict_yet_but_no_dispute() -> None:
    result = consensus([vote("bob", "correct")], required=2)
    assert result.verdict is None and not result.disputed and not result.complete
    assert result.raters == 1


@pytest.mark.parametrize("required", [1, 3])
def test_the_required_count_is_respected(required: int) -> None:
    votes = [vote("bob", "correct"), vote("carol", "correct")]
    assert (consensus(votes, required).verdict == "correct") is (required <= 2)


def test_disagreeing_verdicts_are_disputed() -> None:
    result = consensus([vote("bob", "correct"), vote("carol", "incorrect")], required=2)
    assert result.disputed and result.verdict is None and not result.complete


def test_disagreeing_references_are_disputed_even_when_verdicts_agree() -> None:
    result = consensus([vote("bob", "incorrect", "44.6"), vote("carol", "incorrect", "46.4")], required=2)
    assert result.disputed and result.verdict is None


def test_references_compare_without_case_spacing_or_final_full_stop() -> None:
    result = consensus([vote("bob", "incorrect", "Two  red Cars."), vote("carol", "incorrect", " two red cars")],
                       required=2)
    assert not result.disputed and result.verdict == "incorrect"
    # The spelling of the most recent rater who gave a reference.
    assert result.reference_answer == "two red cars"
    assert normalise("  A\tB  C. ") == "a b c"


def test_a_rater_without_reference_does_not_dispute_one_with() -> None:
    result = consensus([vote("bob", "incorrect"), vote("carol", "incorrect", "44.6")], required=2)
    assert (result.verdict, result.reference_answer, result.disputed) == ("incorrect", "44.6", False)


def test_unsure_abstains_on_the_verdict_but_counts_as_a_rater() -> None:
    result = consensus([vote("bob", "correct"), vote("carol", "unsure", "something else")], required=2)
    assert (result.verdict, result.disputed, result.raters) == ("correct", False, 2)
    assert result.reference_answer is None  # an unsure rater's reference does not count


def test_only_unsure_raters_give_no_verdict() -> None:
    result = consensus([vote("bob", "unsure"), vote("carol", "unsure")], required=2)
    assert result.verdict is None and not result.disputed


def test_the_latest_rating_per_rater_wins() -> None:
    votes = [vote("bob", "correct", order=1), vote("carol", "incorrect", order=2), vote("bob", "incorrect", order=3)]
    result = consensus(votes, required=2)
    assert (result.verdict, result.raters, result.disputed) == ("incorrect", 2, False)
    # The order field decides, not the order of the list.
    assert consensus(list(reversed(votes)), required=2) == result
    assert sorted(v.order for v in latest_per_rater(votes)) == [2, 3]


def test_thumbs_do_not_count_towards_consensus() -> None:
    votes = [vote("bob", "correct"), vote("anon:s1", "incorrect", source="thumbs"),
             vote("anon:s2", "incorrect", source="thumbs")]
    result = consensus(votes, required=2)
    assert result.raters == 1 and result.verdict is None and not result.disputed


def test_a_resolution_overrides_a_dispute() -> None:
    votes = [vote("bob", "correct", "44.6"), vote("carol", "incorrect", "46.4"),
             vote("admin", "incorrect", " 46.4 ", "needed_full", source="resolution")]
    result = consensus(votes, required=2)
    assert (result.verdict, result.reference_answer, result.needs_high_res) == ("incorrect", "46.4", True)
    assert result.resolved and not result.disputed and result.complete and result.raters == 2


def test_the_latest_resolution_wins_even_from_another_admin() -> None:
    votes = [vote("bob", "correct"), vote("carol", "incorrect"),
             vote("ann", "incorrect", source="resolution", order=10),
             vote("sys", "correct", source="resolution", order=11)]
    assert consensus(votes, required=2).verdict == "correct"


def test_an_unsure_resolution_ends_the_dispute_without_a_verdict() -> None:
    votes = [vote("bob", "correct"), vote("carol", "incorrect"), vote("ann", "unsure", source="resolution")]
    result = consensus(votes, required=2)
    assert result.resolved and not result.disputed and result.verdict is None and not result.complete


@pytest.mark.parametrize(
    ("decisions", "label"),
    [
        (["needed_full", "needed_full"], True),
        (["low_enough", "low_enough"], False),
        (["needed_full", "low_enough"], None),  # raters disagree
        (["needed_full", "unsure"], None),  # only one definite decision, two required
        (["needed_full", None], None),
        (["low_enough", "low_enough", "unsure"], False),  # unsure abstains
    ],
)
def test_needs_high_res_label(decisions: list[str | None], label: bool | None) -> None:
    votes = [vote(f"rater{i}", "correct", decision=d) for i, d in enumerate(decisions)]
    assert consensus(votes, required=2).needs_high_res is label


def test_needs_high_res_uses_each_raters_latest_decision() -> None:
    votes = [vote("bob", "correct", decision="low_enough", order=1),
             vote("carol", "correct", decision="needed_full", order=2),
             vote("bob", "correct", decision="needed_full", order=3)]
    assert consensus(votes, required=2).needs_high_res is True


def test_no_votes() -> None:
    result = consensus([], required=2)
    assert (result.raters, result.verdict, result.needs_high_res, result.disputed) == (0, None, None, False)


def test_a_withdrawn_rating_does_not_count_until_the_rater_rates_again() -> None:
    bob, carol = vote("bob", "correct", "44.6"), vote("carol", "incorrect", "46.4")
    withdrawn = vote("bob", WITHDRAWN)
    assert latest_per_rater([bob, carol, withdrawn]) == [carol]
    result = consensus([bob, carol, withdrawn], required=1)
    assert (result.raters, result.verdict, result.disputed) == (1, "incorrect", False)
    again = vote("bob", "incorrect", "46.4")
    assert latest_per_rater([bob, carol, withdrawn, again]) == [again, carol]
    assert consensus([bob, carol, withdrawn, again], required=2).verdict == "incorrect"
