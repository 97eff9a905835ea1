"""Multi-turn GRPO for VisionThink with TRL: ``python -m train.grpo --config train/recipes/NAME.yaml [--field value …]``.

The model sees the 1/4-resolution image; calling ``resize_image`` hands it the full image in a second turn
(``train.environment``), rendered exactly as the checkpoints were trained (``train.chat_template``). Rewards are
accuracy (an LLM or rule judge), format and penalty control (``train.rewards``). Several GPUs and nodes:
``accelerate launch --config_file train/accelerate/<name>.yaml -m train.grpo --config …`` (README).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("train.grpo")


@dataclass
class VisionThinkArguments:
    """What VisionThink adds to TRL's GRPOConfig and ModelConfig (every field also a command-line flag)."""

    dataset: str = field(metadata={"help": "A store export (grpo format), a parquet file, or a Hub dataset in "
                                           "VisionThink's schema (problem, images, original_answer/solution)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows (smoke tests)."})
    judge: str = field(default="env", metadata={
        "help": "rule (offline exact/number/choice match), llm (the paper's judge on an OpenAI-compatible "
                "endpoint, VISIONTHINK_JUDGE_* variables), or env (VISIONTHINK_JUDGE decides)."})
    format_weight: float = field(default=0.5, metadata={"help": "Reward for a well-formed episode."})
    penalty_mode: str = field(default="paper", metadata={
        "help": "paper (Eq. 5), released (the released code's variant), always (every high-resolution answer "
                "loses penalty_value, the paper's Fig. 3a ablation) or none."})
    penalty_theta: float = field(default=0.2, metadata={"help": "θ of Eq. 5."})
    penalty_value: float = field(default=0.1, metadata={"help": "What a penalised answer loses."})
    penalty_scope: str = field(default="correct", metadata={
        "help": "correct: only correct answers of the penalised action lose; all: every rollout of it (Eq. 5 "
                "read literally)."})
    max_turn_tokens: int = field(default=8192, metadata={
        "help": "Tokens per model turn. max_completion_length must hold two turns, the tool text and the full "
                "image's visual tokens; it is raised to that when smaller."})
    max_prompt_tokens: int | None = field(default=8192, metadata={
        "help": "Drop rows whose prompt (its text and the low view's visual tokens) is longer, with a logged count; "
                "the released training's limit is 8192. null (in a recipe) keeps every row."})
    image_max_pixels: int | None = field(default=None, metadata={
        "help": "Lower the image processor's max_pixels (fewer visual tokens, less memory)."})
    freeze_vision_tower: bool = field(default=False, metadata={
        "help": "Train the language model only. A small vision tower loses the fine detail its features carry at "
                "a language model's learning rate (the miniature freezes it; the paper trains everything)."})
    merge_lora: bool = field(default=True, metadata={
        "help": "With use_peft, save the LoRA merged into a full checkpoint the app loads directly."})
    log_completions_jsonl: bool = field(default=True, metadata={
        "help": "Write every scored completion to output_dir/completions.jsonl (TRL's own log_completions "
                "cannot log tool turns with images)."})
    drop_uniform_groups: bool = field(default=False, metadata={
        "help": "Leave out of the loss the groups whose rollouts all got the same reward (the released training "
                "drops them): their advantage is 0, but they count in the loss's token normaliser and in the KL "
                "and entropy terms. The fraction dropped is logged as groups/uniform_fraction."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Validation data (same formats as dataset), evaluated every eval_steps with eval_strategy=steps: "
                "accuracy, format, penalty, high-resolution request ratio and tokens. With metric_for_best_model "
                "(e.g. rewards/accuracy_reward/mean) the best checkpoint is kept and, with load_best_model_at_end, "
                "is what the run saves."})
    eval_rows: int = field(default=0, metadata={
        "help": "Without eval_dataset: hold out this many rows of dataset (chosen with the run's seed) for "
                "validation; they are never trained on."})


class SetupError(ValueError):
    """A training setup that cannot work; the message names the fields to change."""


def check_setup(vt: VisionThinkArguments, training, num_processes: int) -> None:
    """Refuse, before anything loads, the combinations that would train wrong or hang."""
    g = training.num_generations
    local = training.per_device_train_batch_size * training.steps_per_generation
    if local % g:
        raise SetupError(
            f"per_device_train_batch_size ({training.per_device_train_batch_size}) × steps_per_generation "
            f"({training.steps_per_generation}) = {local} is not a multiple of num_generations ({g}): a prompt's "
            "group would be split across processes and the penalty ratio r (Eq. 5) computed on part of it."
        )
    if training.max_tool_calling_iterations not in (None, 1):
        raise SetupError(
            f"max_tool_calling_iterations is {training.max_tool_calling_iterations}; VisionThink allows one resize "
            "(two turns), as the checkpoints were trained. Leave it unset or 1."
        )
    if num_processes > 1:
        generation_safe = (training.use_vllm and training.vllm_mode == "colocate"
                           and training.vllm_tensor_parallel_size == 1)
        sharded = _zero_stage(training) == 3 or bool(training.fsdp) or os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if not generation_safe and (training.use_vllm or sharded):
            raise SetupError(
                "With several processes, only the ranks whose rollouts call resize_image generate a second turn. "
                f"That hangs with use_vllm={training.use_vllm}, vllm_mode={training.vllm_mode!r}, "
                f"vllm_tensor_parallel_size={training.vllm_tensor_parallel_size}"
                + (" and sharded parameters (DeepSpeed ZeRO-3 / FSDP)" if sharded else "")
                + ". Use use_vllm=true with vllm_mode=colocate and vllm_tensor_parallel_size=1, or transformers "
                  "generation with DDP or DeepSpeed ZeRO-1/2."
            )
    from train.rewards import PENALTY_MODES

    if vt.penalty_mode not in PENALTY_MODES or vt.penalty_scope not in ("correct", "all"):
        raise SetupError(f"penalty_mode must be one of {', '.join(PENALTY_MODES)} and penalty_scope correct or all, "
                         f"not {vt.penalty_mode!r} / {vt.penalty_scope!r}.")


def _zero_stage(training) -> int | None:
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage:
        return int(stage)
    config = training.deepspeed
    if isinstance(config, (str, Path)) and Path(config).is_file():
        import json

        config = json.loads(Path(config).read_text())
    if isinstance(config, dict):
        return config.get("zero_optimization", {}).get("stage")
    return None


def completion_budget(processor, max_turn_tokens: int) -> int:
    """Tokens a whole episode may take: two turns, the tool turn's text and the largest full image it can carry."""
    from visionthink import protocol
    from visionthink.hf import processor_pixel_limits

    _, max_pixels = processor_pixel_limits(processor)
    image_tokens = max_pixels // (28 * 28) + 2
    tool_text = len(processor.tokenizer(protocol.tool_response_turn(), add_special_tokens=False)["input_ids"])
    return 2 * max_turn_tokens + tool_text + image_tokens


def trainer_class():
    """GRPOTrainer with VisionThink's additions (defined lazily so importing this module stays light): a fix for TRL
    1.16's tool loop, checkpoints that keep the checkpoint's own processor, and the optional filter of groups whose
    rollouts all got the same reward."""
    import numpy as np
    import torch
    from trl import GRPOTrainer

    class VisionThinkGRPOTrainer(GRPOTrainer):
        """GRPOTrainer plus ``stock_processor`` (the processor as the checkpoint had it, which every save writes)
        and ``drop_uniform_groups``.

        With ``environment_factory``, TRL 1.16 keeps the prompts' image fields (``pixel_values``,
        ``image_grid_thw``) as Python lists; its tool loop then fails (``'list' object has no attribute 'prod'``)
        on a batch where every tool result is text only, i.e. every call was refused with the error turn. They are
        made tensors here, as TRL makes them without an environment."""

        def __init__(self, *args, stock_processor=None, drop_uniform_groups: bool = False, **kwargs):
            self.stock_processor = stock_processor
            self.drop_uniform_groups = drop_uniform_groups
            super().__init__(*args, **kwargs)

        def _tokenize_prompts(self, prompts):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            for key in ("pixel_values", "image_grid_thw"):
                if isinstance(fields.get(key), list) and fields[key]:
                    fields[key] = torch.as_tensor(np.asarray(fields[key]))
            return prompt_ids, images, fields

        def _tool_call_loop(self, prompts, prompt_ids, completion_ids, completions, *args):
            """The protocol, not TRL's JSON parse, decides what follows each first turn, as in serving: the full
            image, the trained error turn, or the end (``train.environment.tool_calls_after``)."""
            from train.environment import tool_calls_after

            for environment, ids, completion in zip(self.environments, completion_ids, completions, strict=True):
                calls = tool_calls_after(environment, ids, self._tokenizer)
                completion[0].pop("tool_calls", None)
                if calls:
                    completion[0]["tool_calls"] = calls
            return super()._tool_call_loop(prompts, prompt_ids, completion_ids, completions, *args)

        def _save(self, output_dir=None, state_dict=None):
            """Every checkpoint (``checkpoint-N/`` too, not only the final save) gets the processor the engine and
            the Hub expect: the checkpoint's own chat template and pixel limits, not the training ones."""
            super()._save(output_dir, state_dict=state_dict)
            if self.args.should_save and self.stock_processor is not None:
                self.stock_processor.save_pretrained(output_dir or self.args.output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if not load_full_weights(self, resume_from_checkpoint, model):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_best_model(self):
            if not load_full_weights(self, self.state.best_model_checkpoint):
                super()._load_best_model()

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._visionthink_rewards = rewards_per_func  # every process's, for the group filter below
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.drop_uniform_groups:
                drop_uniform_groups(self, output)
            return output

    return VisionThinkGRPOTrainer


def load_full_weights(trainer, folder, model=None) -> bool:
    """Load a checkpoint's full weights into the run's model through ``from_pretrained``; False where Transformers'
    own path applies (LoRA adapters, DeepSpeed, FSDP, or no full weights in the folder).

    Transformers 5.23's Trainer reads a checkpoint's weights with a bare ``load_state_dict``, but ``save_pretrained``
    writes Qwen2.5-VL under its legacy key names (``model.layers.*``, ``visual.*``): every key then misses, with
    only a warning, and resuming or loading the best checkpoint silently keeps the weights in memory. Loading goes
    through ``from_pretrained`` here, which renames the keys, and every key must match."""
    import torch

    model = trainer.accelerator.unwrap_model(model if model is not None else trainer.model)
    path = Path(folder)
    names = ("model.safetensors", "model.safetensors.index.json")
    if (hasattr(model, "peft_config") or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
            or not any((path / name).is_file() for name in names)):
        return False
    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(str(path), dtype=dtype, device_map="cpu")
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    return True


def drop_uniform_groups(trainer, output: dict) -> None:
    """Leave out of the loss the groups whose rollouts all got the same total reward (the released training drops
    them). Their advantage is already 0, but they would still count in the loss's token normaliser and in the KL and
    entropy terms, diluting the groups that carry a signal. Logged as ``groups/uniform_fraction``."""
    import torch

    mode = "train" if trainer.model.training else "eval"
    group = trainer.num_generations if mode == "train" else trainer.num_generations_eval
    rewards = (trainer._visionthink_rewards * trainer.reward_weights.to(trainer._visionthink_rewards.device)).nansum(1)
    grouped = rewards.view(-1, group)
    uniform = torch.isclose(grouped, grouped[:, :1]).all(dim=1).repeat_interleave(group)
    local = output["completion_mask"].shape[0]
    start = trainer.accelerator.process_index * local
    keep = (~uniform[start:start + local]).to(output["completion_mask"].dtype).unsqueeze(1)
    output["completion_mask"] = output["completion_mask"] * keep
    loss_mask = output["completion_mask"] * output["tool_mask"] if "tool_mask" in output else output["completion_mask"]
    output["num_items_in_batch"] = trainer.accelerator.gather(loss_mask.sum()).sum()
    trainer._metrics[mode]["groups/uniform_fraction"].append(uniform.float().mean().item())


def load_policy(model_args, training):
    """The policy through ``from_pretrained`` in the dtype and attention the run asks for."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    dtype = model_args.dtype
    if dtype in (None, "auto"):
        dtype = "bfloat16" if training.bf16 else ("float16" if training.fp16 else "float32")
    kwargs = {"dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype,
              "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)


def build_trainer(vt: VisionThinkArguments, training, model_args, *, model=None):
    """Everything for a run: processor with the training template, policy, data, judge, rewards, trainer.

    ``model`` is a policy already built (benchmarks on random weights); by default it is loaded from
    ``model_args.model_name_or_path``, which also names the processor.
    """
    from accelerate import PartialState
    from trl import get_peft_config

    from train.chat_template import install
    from train.data import training_dataset
    from train.environment import ResizeEnvironment
    from train.judge import make_judge
    from train.rewards import RewardSettings, VisionThinkRewards
    from visionthink import protocol
    from visionthink.hf import load_processor
    from visionthink.settings import Settings

    check_setup(vt, training, PartialState().num_processes)
    training.max_tool_calling_iterations = 1
    training.remove_unused_columns = False  # the environment and the rewards read the dataset's columns
    if training.log_completions:
        log.warning("log_completions is off: TRL cannot log completions whose tool turns carry images; "
                    "see output_dir/completions.jsonl instead.")
        training.log_completions = False

    processor = load_processor(model_args.model_name_or_path, revision=model_args.model_revision)
    # What checkpoints are saved with: the processor as loaded, not the one changed for training below.
    stock_processor = load_processor(model_args.model_name_or_path, revision=model_args.model_revision)
    if vt.image_max_pixels:
        size = dict(processor.image_processor.size)
        size["longest_edge"] = vt.image_max_pixels
        processor.image_processor.size = size
    install(processor)
    budget = completion_budget(processor, vt.max_turn_tokens)
    if training.max_completion_length < budget:
        log.info("max_completion_length %d → %d (two turns of %d tokens, the tool text and the full image).",
                 training.max_completion_length, budget, vt.max_turn_tokens)
        training.max_completion_length = budget

    # A sampled vision token would be read as an image slot when the completion is fed back (TRL only guards
    # <|image_pad|>): keep all of them out of the model's turns, as the engine does.
    tokenizer = processor.tokenizer
    vision_ids = sorted({tokenizer.convert_tokens_to_ids(t) for t in protocol.VISION_TOKENS})
    generation = dict(training.generation_kwargs or {})
    if training.use_vllm:
        generation["logit_bias"] = {**generation.get("logit_bias", {}), **{i: -100.0 for i in vision_ids}}
    else:
        generation["suppress_tokens"] = sorted(set(generation.get("suppress_tokens", [])) | set(vision_ids))
    # TRL caps each generate call at the whole completion budget; its tool loop calls generate once per model turn,
    # and these keyword arguments override that cap, so each turn stops at max_turn_tokens.
    generation["max_tokens" if training.use_vllm else "max_new_tokens"] = vt.max_turn_tokens
    training.generation_kwargs = generation

    # Prepared once (by the main process; the others then read its cache) rather than on every rank at once.
    with PartialState().main_process_first():
        dataset = training_dataset(vt.dataset, vt.dataset_split, limit=vt.max_rows,
                                   max_prompt_tokens=vt.max_prompt_tokens, processor=processor)
        evaluation = None
        if vt.eval_dataset:
            evaluation = training_dataset(vt.eval_dataset, vt.dataset_split,
                                          max_prompt_tokens=vt.max_prompt_tokens, processor=processor)
        elif vt.eval_rows:
            if vt.eval_rows >= len(dataset):
                raise SetupError(f"eval_rows ({vt.eval_rows}) leaves nothing to train on: {vt.dataset} has "
                                 f"{len(dataset)} usable rows.")
            split = dataset.train_test_split(test_size=vt.eval_rows, seed=training.seed)
            dataset, evaluation = split["train"], split["test"]
    if evaluation is not None and training.eval_strategy == "no":
        raise SetupError("Validation data is given (eval_dataset or eval_rows) but eval_strategy is 'no': set "
                         "eval_strategy: steps and eval_steps.")
    judge = make_judge(vt.judge, Settings.from_env())
    rewards = VisionThinkRewards(
        processor.tokenizer, judge,
        RewardSettings(vt.format_weight, vt.penalty_mode, vt.penalty_theta, vt.penalty_value, vt.penalty_scope),
        training.num_generations,
        completions_log=Path(training.output_dir) / "completions.jsonl" if vt.log_completions_jsonl else None,
    )
    policy = model if model is not None else load_policy(model_args, training)
    if vt.freeze_vision_tower:
        frozen = [p for name, p in policy.named_parameters() if ".visual." in f".{name}"]
        if not frozen:
            raise SetupError("freeze_vision_tower is set but the model has no vision tower (no '.visual.' parameters).")
        for parameter in frozen:
            parameter.requires_grad_(False)
    trainer = trainer_class()(
        model=policy,
        reward_funcs=rewards.functions,
        args=training,
        train_dataset=dataset,
        eval_dataset=evaluation,
        processing_class=processor,
        environment_factory=ResizeEnvironment,
        peft_config=get_peft_config(model_args),
        stock_processor=stock_processor,
        drop_uniform_groups=vt.drop_uniform_groups,
    )
    return trainer


def resume_point(training) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names: a ``checkpoint-N`` folder, or ``last`` (or ``true``) for the
    newest one in output_dir; None to start afresh."""
    from transformers.trainer_utils import get_last_checkpoint

    wanted = training.resume_from_checkpoint
    if wanted in (None, "", False, "false", "False"):
        return None
    if str(wanted).lower() in ("last", "true"):
        found = get_last_checkpoint(training.output_dir) if Path(training.output_dir).is_dir() else None
        if found is None:
            raise SetupError(f"resume_from_checkpoint={wanted}, but {training.output_dir} holds no checkpoint-N "
                             "folder to resume from.")
        return found
    if not (Path(wanted) / "trainer_state.json").is_file():
        raise SetupError(f"resume_from_checkpoint: {wanted} is not a checkpoint folder (it has no "
                         "trainer_state.json). Name a checkpoint-N folder of an earlier run, or 'last'.")
    return str(wanted)


def save_checkpoint(trainer, output_dir: str | Path, *, merge_lora: bool = True) -> Path:
    """Save a checkpoint the engine loads with ``from_pretrained``: LoRA merged (unless asked not to) and the
    processor with the checkpoint's own chat template and pixel limits, not the training ones."""
    output_dir = Path(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "peft_config")
    if is_peft and merge_lora:
        if trainer.accelerator.is_main_process:
            model.merge_and_unload().save_pretrained(output_dir)
            trainer.stock_processor.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))  # its _save writes the stock processor
    trainer.accelerator.wait_for_everyone()
    return output_dir


RECIPES = Path(__file__).resolve().parent / "recipes"
PROG = "python -m train.grpo"
USAGE = f"{PROG} --config RECIPE.yaml [--FIELD VALUE …]   (--help: recipes and examples; --help-all: every field)"
ABOUT = ("Multi-turn GRPO for VisionThink with TRL. The model sees the 1/4-resolution image; calling resize_image "
         "hands it the full image in a second turn. Rewards are accuracy (an LLM or rule judge), format and penalty "
         "control. A recipe (a YAML file) sets every field of a run; any field given after it on the command line "
         "overrides the recipe's value.")
#: The ``--no_FIELD`` flags HfArgumentParser adds for boolean fields that default to true repeat the field's own help,
#: which then says the opposite of what they do. Ours get their own; TRL's say that they turn the field off.
NEGATION_HELP = {
    "merge_lora": "With use_peft, save the LoRA adapter folder unmerged (the app loads it too) instead of a merged "
                  "full checkpoint.",
    "log_completions_jsonl": "Do not write output_dir/completions.jsonl.",
}


def recipes() -> list[tuple[Path, str]]:
    """The shipped recipes, each with the first clause of its leading comment as a one-line description."""
    found = []
    for path in sorted(RECIPES.glob("*.yaml")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line[1:] if line.startswith("#") else None
            if text is None or text.startswith("   ") or not text.strip():  # code, an indented command, a blank line
                break
            comment.append(text.strip())
        summary = " ".join(comment)
        for stop in (": ", ". "):
            summary = summary.split(stop, 1)[0]
        found.append((path, summary.rstrip(".:") or "(no description: start the file with a comment line)"))
    return found


def short_help() -> str:
    """What ``--help`` prints: what the command does, the recipes, examples, and where every field is listed."""
    import shutil
    import textwrap

    width = min(shutil.get_terminal_size().columns, 100)
    here = Path(os.path.relpath(RECIPES.parent, Path.cwd()))  # paths that work from where the command is run
    listed = [(str(here / "recipes" / path.name), summary) for path, summary in recipes()]
    column = max((len(shown) for shown, _ in listed), default=0) + 2
    lines = [f"usage: {PROG} --config RECIPE.yaml [--FIELD VALUE …]", "", textwrap.fill(ABOUT, width), "",
             "Recipes:"]
    for shown, summary in listed:
        lines += textwrap.wrap(summary, width, initial_indent=f"  {shown:<{column}}",
                               subsequent_indent=" " * (column + 2), break_on_hyphens=False)
    lora, paper = here / "recipes" / "lora-1gpu.yaml", here / "recipes" / "efficient-7b.yaml"
    lines += [
        "",
        "Examples:",
        "  # Retrain from the studio's exported feedback on one GPU",
        f"  {PROG} --config {lora} --dataset data/exports/grpo",
        "  # The same, overriding two of the recipe's fields",
        f"  {PROG} --config {lora} --dataset data/exports/grpo --learning_rate 5e-6 --max_rows 64",
        "  # The paper's setting on several GPUs (README: Retraining)",
        f"  accelerate launch --config_file {here / 'accelerate' / 'zero3.yaml'} -m train.grpo --config {paper}",
        "",
        "Every field, VisionThink's and TRL's (GRPOConfig, ModelConfig), with its help and default:",
        f"  {PROG} --help-all",
    ]
    return "\n".join(lines)


def build_parser():
    """TRL's parser over our fields, GRPOConfig and ModelConfig, with a short usage line and correct ``--no_`` help."""
    import argparse

    from trl import GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((VisionThinkArguments, GRPOConfig, ModelConfig), prog=PROG, usage=USAGE, description=ABOUT,
                       epilog=f"Recipes and examples: {PROG} --help")
    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction) and f"--no_{action.dest}" in action.option_strings:
            action.help = NEGATION_HELP.get(action.dest, f"Turn {action.dest} off (the same as --{action.dest} false).")
            action.default = argparse.SUPPRESS  # the field's own flag holds the default; "(default: False)" misled
    return parser


def _config_problem(args: list[str]) -> str | None:
    """Why ``--config`` cannot be read, naming the shipped recipes; None when it can (or is not given)."""
    if "--config" not in args:
        return None
    index = args.index("--config")
    path = Path(args[index + 1]) if index + 1 < len(args) else None
    if path is not None and path.is_file():
        return None
    names = ", ".join(str(Path(os.path.relpath(p, Path.cwd()))) for p, _ in recipes())
    problem = f"the recipe {path} does not exist" if path is not None else "--config needs the path of a recipe"
    return f"{problem}. The shipped recipes are {names} ({PROG} --help describes them)."


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in args:
        build_parser().print_help()
        return 0
    if "-h" in args or "--help" in args:
        print(short_help())
        return 0
    if not args:
        print(f"{short_help()}\n\n{PROG}: error: give a recipe with --config.", file=sys.stderr)
        return 2
    args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    problem = _config_problem(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    import yaml

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        vt, training, model_args = build_parser().parse_args_and_config(args)
    except (ValueError, yaml.YAMLError) as exc:  # a recipe that is not a mapping, unknown keys, a bad combination
        unknown = "not used by the HfArgumentParser" in str(exc) or "Unknown arguments" in str(exc)
        print(f"{PROG}: error: {exc}" + (f"\n{PROG} --help-all lists every field." if unknown else ""), file=sys.stderr)
        return 2
    from train.data import DataError
    from visionthink.hf import ModelUnavailable
    from visionthink.settings import SettingsError

    try:
        resume = resume_point(training)
        trainer = build_trainer(vt, training, model_args)
    except (SetupError, DataError, SettingsError, ModelUnavailable) as exc:  # SettingsError: JudgeError too
        log.error("%s", exc)
        return 2
    if resume:
        log.info("Resuming from %s (its step, optimizer, scheduler and random state).", resume)
    trainer.train(resume_from_checkpoint=resume)
    path = save_checkpoint(trainer, training.output_dir, merge_lora=vt.merge_lora)
    log.info("Saved the trained checkpoint to %s (load it with VISIONTHINK_MODEL=%s).", path, path)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
