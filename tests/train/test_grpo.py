"""Multi-turn GRPO on the tiny Qwen2.5-VL (CPU): the tool really inserts the full image, its turn is masked,
the rewards arrive, the parameters move, and the saved checkpoint loads in the engine."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from trl import GRPOConfig, ModelConfig

from tests.train.conftest import FULL, record_batches
from tests.support.forcing import ANSWER_TURN, BAD_TOOL_TURN, TOOL_TURN, force_training_episodes
from train.chat_template import TRAINING_CHAT_TEMPLATE
from train.grpo import SetupError, VisionThinkArguments, build_trainer, check_setup, save_checkpoint
from visionthink import protocol
from visionthink.images import downsample

@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("data") / "grpo"
    datasets.Dataset.from_dict({
        "problem": ["<image>\nWhat is the value of Beta in Q3?", "<image>\nWhat colour is the house?"],
        "images": [[Image.fromarray(rng.integers(0, 255, (*FULL, 3), dtype=np.uint8))] for _ in range(2)],
        "original_answer": ["44.6", "red"],
        "solution": ["44.6", "red"],
    }).save_to_disk(str(folder))
    return folder


def make_trainer(train_model_dir, dataset_dir, out, first_turns, **overrides):
    vt = VisionThinkArguments(dataset=str(dataset_dir), judge="rule", max_turn_tokens=96)  # TOOL_TURN: 59
    settings = dict(output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, num_generations=4,
                    per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3, logging_steps=1,
                    report_to="none", beta=0.0, save_strategy="no", seed=0)
    settings.update(overrides)
    model_args = ModelConfig(model_name_or_path=str(train_model_dir), dtype="float32",
                             use_peft=settings.pop("use_peft", False), lora_r=8, lora_alpha=16,
                             lora_target_modules=["q_proj", "v_proj"])
    trainer = build_trainer(vt, GRPOConfig(**settings), model_args)
    force_training_episodes(trainer.model, trainer.processing_class.tokenizer, first_turns)
    batches = record_batches(trainer)
    return trainer, batches


@pytest.fixture(scope="module")
def trained(train_model_dir, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer, batches = make_trainer(train_model_dir, dataset_dir, out, [TOOL_TURN, ANSWER_TURN])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, batches, before, out


def test_two_steps_move_every_parameter(trained):
    trainer, batches, before, _ = trained
    assert len(batches) == 2
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before)
    history = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["tools/call_frequency"] for h in history] == [0.5, 0.5]
    assert all(h["visionthink/well_formed"] == 1.0 for h in history)


def _tool_rows(batch):
    return [i for i in range(batch["completion_ids"].size(0)) if (batch["tool_mask"][i] == 0).any()]


def test_the_tool_turn_is_masked_and_is_exactly_the_trained_turn(trained):
    trainer, batches, _, _ = trained
    batch = batches[0]
    processor = trainer.processing_class
    tool_rows = _tool_rows(batch)
    assert len(tool_rows) == 2  # rows 0 and 2 of each group of 4 call the tool
    full_image = Image.new("RGB", FULL)
    expected = list(processor(text=[protocol.tool_response_turn()], images=[full_image])["input_ids"][0])
    for i in tool_rows:
        ids = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        mask = batch["tool_mask"][i][batch["completion_mask"][i].bool()].tolist()
        start, end = mask.index(0), len(mask) - mask[::-1].index(0)
        assert all(m == 0 for m in mask[start:end]) and all(m == 1 for m in mask[:start] + mask[end:])
        assert ids[start:end] == expected  # masked span = the injected turn, image pads included
        text = processor.tokenizer.decode(ids[:start])
        assert text == TOOL_TURN + protocol.IM_END  # the model's first turn is trained
        assert processor.tokenizer.decode(ids[end:]) == ANSWER_TURN + protocol.IM_END
    assert batch["num_images"] == [2, 1, 2, 1]


def test_only_tokens_after_the_tool_turn_see_the_full_image(trained):
    trainer, batches, _, _ = trained
    batch = batches[0]
    row = _tool_rows(batch)[0]
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    keep = batch["completion_ids"].size(1)

    def logps(pixel_values):
        with torch.no_grad():
            values, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, attention, keep, pixel_values=pixel_values,
                image_grid_thw=batch["image_grid_thw"], num_images=batch["num_images"],
                mm_token_type_ids=batch.get("mm_token_type_ids"))
        return values[row]

    rows_per_image = batch["image_grid_thw"].prod(-1).tolist()
    first_image_of_row = sum(batch["num_images"][:row])
    start = sum(rows_per_image[: first_image_of_row + 1])  # the row's second image: the full-resolution one
    perturbed = batch["pixel_values"].clone()
    perturbed[start: start + rows_per_image[first_image_of_row + 1]] += 0.5
    base, moved = logps(batch["pixel_values"]), logps(perturbed)

    mask = batch["tool_mask"][row].tolist()
    tool_start, tool_end = mask.index(0), len(mask) - mask[::-1].index(0)
    length = int(batch["completion_mask"][row].sum())
    assert torch.equal(base[:tool_start], moved[:tool_start])  # turn 1 never saw the full image
    assert (base[tool_end:length] - moved[tool_end:length]).abs().max() > 1e-4  # turn 2 did


def test_saved_checkpoint_loads_in_the_engine_with_the_stock_template(trained, tmp_path):
    trainer, _, _, _ = trained
    path = save_checkpoint(trainer, tmp_path / "ckpt")
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings

    backend = TransformersBackend.load(str(path), device="cpu")
    assert backend.processor.chat_template != TRAINING_CHAT_TEMPLATE
    assert "tool_response" not in (backend.processor.chat_template or "")
    for name, value in backend.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name
    answer = Engine(backend, settings=GenerationSettings(max_new_tokens=4)).ask(Image.new("RGB", FULL), "What?")
    assert answer.turns and answer.model == str(path)
    assert trainer.processing_class.chat_template == TRAINING_CHAT_TEMPLATE  # the run itself is unchanged


def test_lora_run_saves_a_merged_checkpoint(train_model_dir, dataset_dir, tmp_path):
    from visionthink.hf import load_model

    trainer, _ = make_trainer(train_model_dir, dataset_dir, tmp_path / "run", [ANSWER_TURN, TOOL_TURN],
                              use_peft=True, max_steps=1)
    trainer.train()
    path = save_checkpoint(trainer, tmp_path / "merged")
    assert not (path / "adapter_config.json").exists()  # a plain checkpoint the engine loads as it is
    base, merged = load_model(str(train_model_dir), device="cpu").state_dict(), load_model(str(path), device="cpu").state_dict()
    assert set(base) == set(merged)
    adapted = [name for name in base if not torch.equal(base[name], merged[name])]
    assert adapted and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in adapted)


def test_invalid_calls_get_the_error_turn_and_no_format_reward(train_model_dir, dataset_dir, tmp_path):
    trainer, batches = make_trainer(train_model_dir, dataset_dir, tmp_path / "run", [BAD_TOOL_TURN], max_steps=1)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert lines and all(line["injected"] == ["error"] for line in lines)
    assert not any(line["well_formed"] for line in lines)
    row = batches[0]
    ids = row["completion_ids"][0][row["completion_mask"][0].bool()].tolist()
    mask = row["tool_mask"][0][row["completion_mask"][0].bool()].tolist()
    start, end = mask.index(0), len(mask) - mask[::-1].index(0)
    injected = trainer.processing_class.tokenizer.decode(ids[start:end])
    assert injected.startswith(f"{protocol.IM_START}user\n<tool_response>\nERROR occurs during the function tool call.")
    assert injected.endswith(protocol.ERROR_FOLLOWUP + protocol.IM_END + f"\n{protocol.IM_START}assistant\n")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(per_device_train_batch_size=3, num_generations=3, steps_per_generation=1, gradient_accumulation_steps=1),
         None),
        # Two processes with 2 completions each: TRL accepts the global batch of 4, but each group of 4 would be
        # split in halves across the processes (steps_per_generation is set after TRL's own single-process check).
        (dict(per_device_train_batch_size=2, num_generations=4, steps_per_generation=2, split_to=1),
         "not a multiple of num_generations"),
        (dict(max_tool_calling_iterations=2), "max_tool_calling_iterations is 2"),
    ],
)
def test_setup_checks_name_the_fields(overrides, message, tmp_path):
    settings = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=4,
                    per_device_train_batch_size=4, report_to="none")
    settings.update(overrides)
    split_to = settings.pop("split_to", None)
    training = GRPOConfig(**settings)
    if split_to is not None:
        training.steps_per_generation = split_to
    vt = VisionThinkArguments(dataset="unused")
    if message is None:
        check_setup(vt, training, num_processes=1)
        return
    with pytest.raises(SetupError, match=message):
        check_setup(vt, training, num_processes=1)


def test_multi_process_setups_that_would_hang_are_refused(tmp_path, monkeypatch):
    vt = VisionThinkArguments(dataset="unused")
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=4, per_device_train_batch_size=4,
                report_to="none")
    check_setup(vt, GRPOConfig(**base), num_processes=2)  # DDP with transformers generation: fine
    server = GRPOConfig(**base, use_vllm=True, vllm_mode="server")
    with pytest.raises(SetupError, match="vllm_mode='server'"):
        check_setup(vt, server, num_processes=2)
    check_setup(vt, server, num_processes=1)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")  # what `accelerate launch` with zero3.yaml sets
    with pytest.raises(SetupError, match="ZeRO-3"):
        check_setup(vt, GRPOConfig(**base), num_processes=2)
    check_setup(vt, GRPOConfig(**base, use_vllm=True, vllm_mode="colocate"), num_processes=2)  # the paper's recipe


def test_training_rows_hold_the_quarter_image_and_the_original(dataset_dir):
    from train.data import prompt_messages, training_dataset

    rows = training_dataset(dataset_dir)
    source = datasets.load_from_disk(str(dataset_dir))
    assert len(rows) == 2
    for row, original in zip(rows, source, strict=True):
        assert row["prompt"] == prompt_messages(original["problem"])
        assert np.array_equal(np.asarray(row["images"][0]), np.asarray(downsample(original["images"][0])))
        assert np.array_equal(np.asarray(row["full_image"]), np.asarray(original["images"][0]))
        assert row["original_answer"] == original["original_answer"]


def test_an_unmerged_lora_adapter_loads_in_the_engine(train_model_dir, dataset_dir, tmp_path):
    from visionthink.backends import TransformersBackend
    from visionthink.hf import check_available

    trainer, _ = make_trainer(train_model_dir, dataset_dir, tmp_path / "run", [ANSWER_TURN], use_peft=True,
                              max_steps=1)
    trainer.train()
    adapter = save_checkpoint(trainer, tmp_path / "adapter", merge_lora=False)
    merged = save_checkpoint(trainer, tmp_path / "merged")
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
    check_available(str(adapter))  # the base it names is a local folder
    from_adapter = TransformersBackend.load(str(adapter), device="cpu").model.state_dict()
    from_merged = TransformersBackend.load(str(merged), device="cpu").model.state_dict()
    assert set(from_adapter) == set(from_merged)
    assert all(torch.allclose(from_adapter[k], from_merged[k], atol=1e-6) for k in from_adapter)


def test_vision_tokens_are_never_sampled(trained):
    trainer, batches, _, _ = trained
    tokenizer = trainer.processing_class.tokenizer
    vision = {tokenizer.convert_tokens_to_ids(t) for t in protocol.VISION_TOKENS}
    assert vision <= set(trainer.generation_config.suppress_tokens)  # TRL alone suppresses only <|image_pad|>
    for batch in batches:  # and no model token is one of them
        model_tokens = batch["completion_ids"][(batch["completion_mask"] * batch["tool_mask"]).bool()]
        assert not set(model_tokens.tolist()) & vision
