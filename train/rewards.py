"""The VisionThink rewards as plain TRL reward functions: accuracy, format and penalty control.

    R = accuracy + 0.5 · format − P_control                                    (paper, Eq. 4)

- ``accuracy_reward``: 1 when the judge finds the ``<answer>`` right, 0 when wrong; ``None`` (excluded) when the
  judgement failed.
- ``format_reward``: 0.5 for a well-formed episode: one think and one answer; or one think and exactly one valid
  ``resize_image`` call, the full image, then one think and one answer (``train.episodes.Episode.well_formed``).
- ``penalty_reward``: per group of completions for one prompt, over the correct ones, r = C_direct /
  (C_direct + C_high). When r < θ, correct direct answers lose 0.1; otherwise correct high-resolution answers lose
  0.1 (Eq. 5, θ = 0.2). ``scope="all"`` penalises every rollout of the penalised action, as Eq. 5 reads literally.
  A group with no correct answer has no penalty. ``mode="released"`` reproduces the released code instead: every
  correct answer after a tool call loses 0.1, and correct direct answers lose 0.1 when 0 < r < θ.
  ``mode="always"`` penalises every high-resolution answer whatever r is (the paper's Fig. 3a ablation), and
  ``mode="none"`` never penalises.

When the judge fails for a completion, all three return ``None`` for it, so TRL leaves it out of the group baseline
and gives it no advantage (a failed judgement is never a silent 0 or 1).

Besides TRL's own ``rewards/<function>/mean`` and ``/std`` for each of the three, every batch logs through TRL's
``log_metric`` (averaged over processes and logging steps, then sent to ``report_to``, e.g. TensorBoard):
``visionthink/high_res_ratio`` (share of completions that got the full image), ``visionthink/well_formed``,
``visionthink/truncated`` (the last turn never ended), ``visionthink/judge_failures`` (count per batch),
``visionthink/penalised/direct`` and ``visionthink/penalised/high_res`` (share of completions that lost the penalty,
by action), ``visionthink/tokens/first_turn`` and ``visionthink/tokens/second_turn`` (mean tokens the model wrote
in each turn, without its end-of-turn token; the second over the completions that have one), and per kind of
question (where the data has a ``kind`` column) the request ratio and accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from train.episodes import Episode, read_episode

log = logging.getLogger(__name__)

PenaltyMode = Literal["paper", "released", "always", "none"]
PENALTY_MODES = ("paper", "released", "always", "none")


@dataclass(frozen=True)
class RewardSettings:
    format_weight: float = 0.5
    penalty_mode: PenaltyMode = "paper"
    penalty_theta: float = 0.2
    penalty_value: float = 0.1
    penalty_scope: Literal["correct", "all"] = "correct"

    def __post_init__(self) -> None:
        if self.penalty_mode not in PENALTY_MODES:
            raise ValueError(f"penalty_mode must be one of {', '.join(PENALTY_MODES)}, not {self.penalty_mode!r}.")
        if self.penalty_scope not in ("correct", "all"):
            raise ValueError(f"penalty_scope must be correct or all, not {self.penalty_scope!r}.")
        if not 0 <= self.penalty_theta <= 1:
            raise ValueError(f"penalty_theta must be within [0, 1], not {self.penalty_theta}.")


def group_penalties(correct: Sequence[bool | None], high_res: Sequence[bool], settings: RewardSettings,
                    called_tool: Sequence[bool] | None = None) -> list[float | None]:
    """The penalty of each completion of one prompt's group (0 or minus ``penalty_value``); None where unjudged.

    ``high_res``: the completion got the full image. ``called_tool`` (released mode only): it called a tool at all.
    """
    n = len(correct)
    if settings.penalty_mode == "none":
        return [None if c is None else 0.0 for c in correct]
    if settings.penalty_mode == "always":
        return [None if c is None else -settings.penalty_value if h and (c or settings.penalty_scope == "all") else 0.0
                for c, h in zip(correct, high_res, strict=True)]
    known = [(bool(c), h) for c, h in zip(correct, high_res, strict=True) if c is not None]
    c_direct = sum(1 for c, h in known if c and not h)
    c_high = sum(1 for c, h in known if c and h)
    value = settings.penalty_value
    out: list[float | None] = []
    if settings.penalty_mode == "released":
        tool = list(called_tool) if called_tool is not None else list(high_res)
        c_correct = sum(1 for c, _ in known if c)
        c_direct = sum(1 for c, t in zip(correct, tool, strict=True) if c and not t)
        r = c_direct / (c_correct + 1e-4)
        for i in range(n):
            if correct[i] is None:
                out.append(None)
            elif correct[i] and tool[i]:
                out.append(-value)
            elif correct[i] and 0 < r < settings.penalty_theta:
                out.append(-value)
            else:
                out.append(0.0)
        return out
    if c_direct + c_high == 0:
        return [None if c is None else 0.0 for c in correct]
    r = c_direct / (c_direct + c_high)
    penalise_high = r >= settings.penalty_theta
    for c, h in zip(correct, high_res, strict=True):
        if c is None:
            out.append(None)
        elif h == penalise_high and (c or settings.penalty_scope == "all"):
            out.append(-value)
        else:
            out.append(0.0)
    return out


@dataclass
class _Scored:
    episodes: list[Episode]
    correct: list[int | None]


class VisionThinkRewards:
    """The three reward functions over one shared scoring of each batch (one judge call per completion)."""

    def __init__(self, tokenizer, judge, settings: RewardSettings, num_generations: int, *,
                 reference_column: str = "auto", completions_log: Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.judge = judge
        self.settings = settings
        self.num_generations = num_generations
        self.reference_column = reference_column
        self.completions_log = completions_log
        self._memo: tuple[tuple, _Scored] | None = None
        self.accuracy_reward = self._named("accuracy_reward", self._accuracy)
        self.format_reward = self._named("format_reward", self._format)
        self.penalty_reward = self._named("penalty_reward", self._penalty)

    @property
    def functions(self) -> list[Callable]:
        return [self.accuracy_reward, self.format_reward, self.penalty_reward]

    @staticmethod
    def _named(name: str, fn: Callable) -> Callable:
        def reward(prompts, completions, completion_ids, **kwargs):
            return fn(prompts, completion_ids, kwargs)

        reward.__name__ = reward.__qualname__ = name
        reward.__doc__ = fn.__doc__
        return reward

    # --- scoring, once per batch ---

    def _references(self, kwargs: dict) -> list[str]:
        column = self.reference_column
        if column == "auto":
            column = "solution" if getattr(self.judge, "name", "") == "rule" and "solution" in kwargs else "original_answer"
        if column not in kwargs:
            raise KeyError(f"The dataset has no {column!r} column for the reference answers.")
        return [str(v) for v in kwargs[column]]

    def score(self, completion_ids: list[list[int]], kwargs: dict) -> _Scored:
        """Judge a batch once for the three functions: TRL hands all three the same ``completion_ids`` list, so the
        memo is that list itself (released by ``penalty_reward``, the last of the three). A later batch is judged,
        logged and written anew even when its completions equal the last one's (a converged model, a forced test),
        which a memo by content would skip."""
        key = (completion_ids, kwargs.get("problem"))
        if self._memo is not None and all(a is b for a, b in zip(self._memo[0], key, strict=True)):
            return self._memo[1]
        episodes = [read_episode(ids, self.tokenizer) for ids in completion_ids]
        questions = [str(q) for q in kwargs["problem"]]
        references = self._references(kwargs)
        correct = self.judge.score_many([(q, r, e.answer) for q, r, e in zip(questions, references, episodes,
                                                                             strict=True)])
        scored = _Scored(episodes, correct)
        self._memo = (key, scored)
        self._report(questions, scored, kwargs)
        return scored

    def _report(self, questions: list[str], scored: _Scored, kwargs: dict) -> None:
        failures = sum(1 for c in scored.correct if c is None)
        if failures:
            log.warning("The judge failed on %d of %d completions; they get no reward this step.", failures,
                        len(scored.correct))
        kinds = [str(k) for k in kwargs.get("kind") or [""] * len(scored.episodes)]
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            n = len(scored.episodes)
            log_metric("visionthink/high_res_ratio", sum(e.requested_high_res for e in scored.episodes) / n)
            log_metric("visionthink/well_formed", sum(e.well_formed for e in scored.episodes) / n)
            log_metric("visionthink/truncated", sum(e.truncated for e in scored.episodes) / n)
            log_metric("visionthink/judge_failures", float(failures))
            for name, lengths in self._turn_lengths(scored.episodes).items():
                if lengths:
                    log_metric(f"visionthink/tokens/{name}", sum(lengths) / len(lengths))
            # Per kind of question, where the data says (the miniature's colour, shape, pattern).
            for kind in sorted(set(kinds) - {""}):
                rows = [i for i, k in enumerate(kinds) if k == kind]
                log_metric(f"visionthink/high_res_ratio/{kind}",
                           sum(scored.episodes[i].requested_high_res for i in rows) / len(rows))
                judged = [scored.correct[i] for i in rows if scored.correct[i] is not None]
                if judged:
                    log_metric(f"visionthink/accuracy/{kind}", sum(judged) / len(judged))
        state = kwargs.get("trainer_state")
        if self.completions_log is not None and (state is None or state.is_world_process_zero):
            self.completions_log.parent.mkdir(parents=True, exist_ok=True)
            with self.completions_log.open("a", encoding="utf-8") as out:
                for question, kind, episode, correct in zip(questions, kinds, scored.episodes, scored.correct,
                                                            strict=True):
                    out.write(json.dumps({
                        "step": state.global_step if state is not None else None, "question": question,
                        "kind": kind or None,
                        "turns": [t.text for t in episode.turns], "injected": episode.injected,
                        "requested_high_res": episode.requested_high_res, "well_formed": episode.well_formed,
                        "correct": correct,
                    }, ensure_ascii=False) + "\n")

    def _turn_lengths(self, episodes: list[Episode]) -> dict[str, list[int]]:
        """Tokens of each model turn (its text re-encoded, without the end-of-turn token), first and second."""
        texts = [(i, t.text) for e in episodes for i, t in enumerate(e.turns[:2])]
        if not texts:
            return {}
        encoded = self.tokenizer([text for _, text in texts], add_special_tokens=False)["input_ids"]
        lengths: dict[str, list[int]] = {"first_turn": [], "second_turn": []}
        for (i, _), ids in zip(texts, encoded, strict=True):
            lengths["first_turn" if i == 0 else "second_turn"].append(len(ids))
        return lengths

    # --- the three functions ---

    def _accuracy(self, prompts, completion_ids, kwargs) -> list[float | None]:
        """1.0 when the judge finds the answer right, 0.0 when wrong, None when the judgement failed."""
        return [None if c is None else float(c) for c in self.score(completion_ids, kwargs).correct]

    def _format(self, prompts, completion_ids, kwargs) -> list[float | None]:
        """``format_weight`` (0.5) for a well-formed episode, else 0; None where the judgement failed."""
        scored = self.score(completion_ids, kwargs)
        return [None if c is None else self.settings.format_weight * float(e.well_formed)
                for e, c in zip(scored.episodes, scored.correct, strict=True)]

    def _penalty(self, prompts, completion_ids, kwargs) -> list[float | None]:
        """Penalty control per prompt group (paper Eq. 5, or the released code's variant)."""
        scored = self.score(completion_ids, kwargs)
        g = self.num_generations
        if len(completion_ids) % g:
            raise ValueError(
                f"The reward batch has {len(completion_ids)} completions, not a multiple of num_generations={g}: a "
                "prompt's group was split across processes. Make per_device_train_batch_size × steps_per_generation "
                "a multiple of num_generations."
            )
        questions = list(kwargs["problem"])
        out: list[float | None] = []
        for start in range(0, len(completion_ids), g):
            if len(set(map(str, questions[start:start + g]))) != 1:
                raise ValueError(
                    "A reward group mixes prompts: make per_device_train_batch_size × steps_per_generation a multiple "
                    f"of num_generations={g}."
                )
            episodes = scored.episodes[start:start + g]
            correct = [None if c is None else bool(c) for c in scored.correct[start:start + g]]
            out.extend(group_penalties(
                correct, [e.requested_high_res for e in episodes], self.settings,
                called_tool=[any(t.attempted_tool_call for t in (e.turns[:-1] if len(e.turns) > 1 else e.turns))
                             for e in episodes],
            ))
        self._memo = None  # the batch is scored; let its completions go
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and out:
            penalised = [bool(p) for p in out]  # None (unjudged) and 0.0 are not penalised
            for name, high in (("direct", False), ("high_res", True)):
                log_metric(f"visionthink/penalised/{name}", sum(
                    1 for p, e in zip(penalised, scored.episodes, strict=True) if p and e.requested_high_res == high
                ) / len(out))
        return out
