"""The tiny offline Qwen2.5-VL and the real Hugging Face loading path (visionthink.tiny, visionthink.hf)."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support.ports import SilentServer, refused_url
from visionthink import hf, images, protocol, tiny

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

QWEN_IDS = {  # Qwen2.5's order, shifted to start after the 2,000-token BPE
    protocol.END_OF_TEXT: 2000,
    protocol.IM_START: 2001,
    protocol.IM_END: 2002,
    protocol.VISION_START: 2009,
    protocol.VISION_END: 2010,
    protocol.VISION_PAD: 2011,
    protocol.IMAGE_PAD: 2012,
    protocol.VIDEO_PAD: 2013,
    "<tool_call>": 2014,
    "</tool_call>": 2015,
}


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return hf.load_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return hf.load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 1024x768 picture with structure (a gradient and a block), docs/tokens.md §5's first worked example."""
    gradient = Image.linear_gradient("L").resize((1024, 768)).convert("RGB")
    gradient.paste((200, 30, 40), (600, 200, 900, 500))
    return gradient


def chat_messages(conversation: protocol.Conversation, pictures: list[Image.Image] | None = None) -> list[dict]:
    """The conversation as chat-template messages (structured user content, as a dataset row would have)."""
    messages = []
    for message in conversation.messages:
        if message.role != "user":
            messages.append({"role": message.role, "content": message.text})
            continue
        content = []
        for part in message.parts:
            if isinstance(part, protocol.ImageSlot):
                content.append({"type": "image", "image": pictures[part.index]} if pictures else {"type": "image"})
            else:
                content.append({"type": "text", "text": part})
        messages.append({"role": "user", "content": content})
    return messages


def count_image_pads(input_ids: torch.Tensor) -> int:
    return int((input_ids == QWEN_IDS[protocol.IMAGE_PAD]).sum())


# --- The built folder ------------------------------------------------------------------------------------------


def test_build_writes_the_hub_layout(tiny_model_dir):
    for name in tiny.REQUIRED_FILES:
        assert (tiny_model_dir / name).is_file(), name
    assert tiny.is_complete(tiny_model_dir)

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert config["_name_or_path"] == str(tiny_model_dir)
    assert config["tie_word_embeddings"] is True
    text, vision = config["text_config"], config["vision_config"]
    assert (text["vocab_size"], text["hidden_size"], text["num_hidden_layers"]) == (2048, 64, 2)
    assert text["rope_parameters"]["mrope_section"] == [2, 3, 3]
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == text["hidden_size"] // text["num_attention_heads"]
    assert (vision["depth"], vision["hidden_size"], vision["out_hidden_size"]) == (2, 32, 64)
    assert (vision["fullatt_block_indexes"], vision["window_size"]) == ([1], 112)
    assert config["image_token_id"] == QWEN_IDS[protocol.IMAGE_PAD]
    assert config["vision_start_token_id"] == QWEN_IDS[protocol.VISION_START]

    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [QWEN_IDS[protocol.IM_END], QWEN_IDS[protocol.END_OF_TEXT]]
    assert generation["pad_token_id"] == QWEN_IDS[protocol.END_OF_TEXT]

    preprocessor = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert preprocessor["processor_class"] == "Qwen2_5_VLProcessor"
    assert preprocessor["image_processor_type"] == "Qwen2VLImageProcessor"
    assert preprocessor["size"] == {"shortest_edge": images.MIN_PIXELS, "longest_edge": images.MAX_PIXELS}
    assert (preprocessor["patch_size"], preprocessor["merge_size"], preprocessor["temporal_patch_size"]) == (14, 2, 2)
    assert preprocessor["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])

    stock = resources.files("trl").joinpath("chat_templates/qwen2_5_vl.jinja").read_text()
    assert (tiny_model_dir / "chat_template.jinja").read_text() == stock
    assert json.loads((tiny_model_dir / "chat_template.json").read_text()) == {"chat_template": stock}

    # About 289k parameters: tiny on disk.
    assert (tiny_model_dir / "model.safetensors").stat().st_size < 2_000_000


def test_cli_builds_with_lower_pixel_cap(tmp_path, tiny_model_dir):
    out = tmp_path / "cli-model"
    assert tiny.main(["--out", str(out), "--seed", "7", "--max-pixels", str(224 * 224)]) == 0
    processor = hf.load_processor(str(out))
    assert hf.processor_pixel_limits(processor) == (images.MIN_PIXELS, 224 * 224)
    grid = processor.image_processor(images=[Image.new("RGB", (1024, 768))], return_tensors="pt")["image_grid_thw"]
    assert int(grid.prod()) // 4 == images.visual_tokens(1024, 768, max_pixels=224 * 224) == 54
    # Another seed gives other weights (same architecture, same tokenizer).
    ours, reference = load_file(str(out / "model.safetensors")), load_file(str(tiny_model_dir / "model.safetensors"))
    assert ours.keys() == reference.keys()
    assert any(not torch.equal(ours[k], reference[k]) for k in ours)
    assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_cli_refuses_a_cap_below_the_floor(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tiny.main(["--out", str(tmp_path / "x"), "--max-pixels", "100"])
    assert "max_pixels" in capsys.readouterr().err


def test_same_seed_gives_identical_weights(tmp_path, tiny_model_dir):
    state = torch.random.get_rng_state()
    again = tiny.build_tiny_model(tmp_path / "again", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "the build must not disturb the caller's RNG"
    first, second = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and len(first) > 10
    for key in first:
        assert torch.equal(first[key], second[key]), key
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"):
        assert (tiny_model_dir / name).read_bytes() == (again / name).read_bytes(), name
    # Not trivially equal: the weights are random, not constant.
    embed = next(v for k, v in first.items() if "embed_tokens" in k)
    assert embed.std() > 0


# --- Tokenizer -------------------------------------------------------------------------------------------------


def test_special_tokens_follow_qwen(processor):
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 2016
    for token, token_id in QWEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token
    assert tokenizer.eos_token == protocol.IM_END and tokenizer.eos_token_id == QWEN_IDS[protocol.IM_END]
    assert tokenizer.pad_token == protocol.END_OF_TEXT
    assert processor.image_token_id == QWEN_IDS[protocol.IMAGE_PAD]
    assert "<tool_call>" not in tokenizer.all_special_tokens

    turn = "<think>The text is small.</think>\n" + protocol.tool_call_text()
    ids = tokenizer.encode(turn + protocol.IM_END, add_special_tokens=False)
    assert ids[-1] == QWEN_IDS[protocol.IM_END]
    assert QWEN_IDS["<tool_call>"] in ids and QWEN_IDS["</tool_call>"] in ids
    # The tool tags survive skip_special_tokens (the original call parser relies on it); <|im_end|> does not.
    assert tokenizer.decode(ids, skip_special_tokens=True) == turn
    assert tokenizer.decode(ids) == turn + protocol.IM_END


def test_byte_level_bpe_round_trips_any_text(processor):
    tokenizer = processor.tokenizer
    for text in (protocol.SYSTEM_PROMPT, protocol.USER_TEMPLATE, protocol.ERROR_FOLLOWUP):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    for text in ("Größe: 12 km², 北京 ✓ 🚌\r\n\ttabs  and  spaces", "<think>x</think><answer>\\boxed{42}</answer>"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert max(ids) < 2000  # text without Qwen's added tokens is all byte-level BPE
        assert tokenizer.decode(ids) == text
    # The BPE learned merges from its corpus: common prompt text is much shorter than its bytes.
    assert len(tokenizer.encode(protocol.FOLLOWUP, add_special_tokens=False)) < len(protocol.FOLLOWUP.encode()) / 2


# --- Chat template ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question", ["What colour is the bus?", "<image>\nHow many people are there?", "Compare <image> with the sign."]
)
def test_stock_chat_template_matches_protocol_render(processor, question):
    conversation = protocol.Conversation.start(question)
    rendered = processor.apply_chat_template(chat_messages(conversation), add_generation_prompt=True, tokenize=False)
    assert rendered == conversation.render()
    assert rendered.count(protocol.IMAGE_PLACEHOLDER) == 1


def test_tokenized_chat_template_matches_processor_on_rendered_text(processor, photo):
    conversation = protocol.Conversation.start("What is in the red box?")
    low = images.downsample(photo)
    from_template = processor.apply_chat_template(
        chat_messages(conversation, [low]), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt",
    )
    from_render = processor(text=[conversation.render()], images=[low], return_tensors="pt")
    assert torch.equal(from_template["input_ids"], from_render["input_ids"])
    assert torch.equal(from_template["pixel_values"], from_render["pixel_values"])


# --- Processor -------------------------------------------------------------------------------------------------


def test_processor_is_image_only_without_torchvision(processor):
    assert not hf.torchvision_works()
    assert type(processor).__name__ == "ImageOnlyQwen2_5_VLProcessor"
    assert isinstance(processor, hf.ImageOnlyQwen2_5_VLProcessor)
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert hf.processor_pixel_limits(processor) == (images.MIN_PIXELS, images.MAX_PIXELS)
    assert hf.processor_pixel_limits(processor.image_processor) == (images.MIN_PIXELS, images.MAX_PIXELS)


def test_load_processor_falls_back_when_autoprocessor_needs_torchvision(tiny_model_dir, monkeypatch):
    # Pretend torchvision imports: AutoProcessor then still fails on the video processor, and we fall back.
    monkeypatch.setattr(hf, "torchvision_works", lambda: True)
    processor = hf.load_processor(str(tiny_model_dir), local_files_only=True)
    assert isinstance(processor, hf.ImageOnlyQwen2_5_VLProcessor)


def test_processor_keeps_hub_style_pixel_limits(tiny_model_dir, tmp_path):
    """A Hub checkpoint writes min_pixels/max_pixels (no size); the loaded processor must use exactly those."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "hub-style"))
    config = json.loads((folder / "preprocessor_config.json").read_text())
    del config["size"]
    config.update(min_pixels=images.MIN_PIXELS, max_pixels=1_003_520)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    processor = hf.load_processor(str(folder))
    assert hf.processor_pixel_limits(processor) == (images.MIN_PIXELS, 1_003_520)
    grid = processor(text=[protocol.IMAGE_PLACEHOLDER], images=[Image.new("RGB", (2048, 1024))])["image_grid_thw"]
    assert int(grid.prod()) // 4 == images.visual_tokens(2048, 1024, max_pixels=1_003_520) != 2701


def test_saved_processor_keeps_the_stock_class_name(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    for name in ("processor_config.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / name).read_text())["processor_class"] == "Qwen2_5_VLProcessor", name
    reloaded = hf.load_processor(str(tmp_path))
    assert hf.processor_pixel_limits(reloaded) == hf.processor_pixel_limits(processor)
    text = protocol.Conversation.start("q").render()
    assert reloaded.tokenizer.encode(text) == processor.tokenizer.encode(text)


def test_processor_pixel_limits_rejects_processors_without_limits():
    class NoSize:
        size = {"height": 224, "width": 224}

    with pytest.raises(ValueError, match="shortest_edge"):
        hf.processor_pixel_limits(NoSize())


# --- Model -----------------------------------------------------------------------------------------------------


def test_model_loads_through_from_pretrained(model, tiny_model_dir):
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert model.config._name_or_path == str(tiny_model_dir)
    assert model.generation_config.eos_token_id == [QWEN_IDS[protocol.IM_END], QWEN_IDS[protocol.END_OF_TEXT]]
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()  # tied
    assert 250_000 < sum(p.numel() for p in model.parameters()) < 350_000


def test_generate_with_the_low_res_image(model, processor, photo):
    low = images.downsample(photo)
    conversation = protocol.Conversation.start("What is in the red box?")
    inputs = processor(text=[conversation.render()], images=[low], return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    grid = inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 28, 36]]
    assert int(grid.prod()) // 4 == images.visual_tokens(*low.size) == 252
    assert count_image_pads(inputs["input_ids"]) == 252 == int(inputs["mm_token_type_ids"].sum())

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 2048)
    assert torch.isfinite(logits).all()
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(output[0, :prompt_length], inputs["input_ids"][0])
    assert 1 <= output.shape[1] - prompt_length <= 4


def test_generate_after_a_resize_with_two_images(model, processor, photo):
    low, full = images.downsample(photo), images.full_resolution(photo)
    conversation = protocol.Conversation.start("What is in the red box?")
    conversation.add_model_turn("<think>Too small.</think>\n" + protocol.tool_call_text())
    conversation.add_tool_response()
    text = conversation.render()
    inputs = processor(text=[text], images=[low, full], return_tensors="pt")
    tokens = [int(g.prod()) // 4 for g in inputs["image_grid_thw"]]
    assert tokens == [images.visual_tokens(*low.size), images.visual_tokens(*full.size)] == [252, 999]
    assert count_image_pads(inputs["input_ids"]) == 252 + 999
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(QWEN_IDS[protocol.VISION_START]) == 2
    # The injected turn follows the model's <|im_end|> with no newline (docs/protocol.md §5).
    call_end = len(ids) - 1 - ids[::-1].index(QWEN_IDS["</tool_call>"])  # the model's, not the system prompt's
    end_of_turn = ids.index(QWEN_IDS[protocol.IM_END], call_end)
    assert ids[end_of_turn + 1] == QWEN_IDS[protocol.IM_START]

    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]

    # The full-resolution pixels reach the model: changing them changes the next-token logits.
    other = processor(text=[text], images=[low, full.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], return_tensors="pt")
    assert torch.equal(other["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        first = model(**inputs, logits_to_keep=1).logits
        second = model(**other, logits_to_keep=1).logits
    assert not torch.allclose(first, second)


# --- Devices ---------------------------------------------------------------------------------------------------


def test_pick_device_and_dtype_on_cpu():
    assert hf.pick_device_and_dtype("cpu") == (torch.device("cpu"), torch.float32, "sdpa")
    if not torch.cuda.is_available():
        assert hf.pick_device_and_dtype("auto") == (torch.device("cpu"), torch.float32, "sdpa")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            hf.pick_device_and_dtype("cuda")
    for bad in ("tpu", "gpu0", "cuda:x"):
        with pytest.raises(ValueError):
            hf.pick_device_and_dtype(bad)


@pytest.mark.parametrize("flash", [False, True])
def test_pick_device_and_dtype_on_cuda(monkeypatch, flash):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(hf, "_flash_attention_works", lambda: flash)
    attn = "flash_attention_2" if flash else "sdpa"
    assert hf.pick_device_and_dtype("auto") == (torch.device("cuda", 0), torch.bfloat16, attn)
    assert hf.pick_device_and_dtype("cuda") == (torch.device("cuda", 0), torch.bfloat16, attn)
    assert hf.pick_device_and_dtype("cuda:1") == (torch.device("cuda", 1), torch.bfloat16, attn)
    with pytest.raises(ValueError, match="does not exist"):
        hf.pick_device_and_dtype("cuda:2")


def test_load_model_on_cuda_passes_dtype_kernel_and_device(monkeypatch):
    import transformers

    seen = {}

    class FakeModel:
        def to(self, device):
            seen["to"] = device
            return self

        def eval(self):
            seen["eval"] = True
            return self

    def fake_from_pretrained(name, **kwargs):
        seen["name"], seen["kwargs"] = name, kwargs
        return FakeModel()

    monkeypatch.setattr(
        hf, "pick_device_and_dtype", lambda device: (torch.device("cuda", 1), torch.bfloat16, "flash_attention_2")
    )
    monkeypatch.setattr(
        transformers.Qwen2_5_VLForConditionalGeneration, "from_pretrained", staticmethod(fake_from_pretrained)
    )
    hf.load_model("Senqiao/VisionThink-Efficient", revision="abc123", device="cuda:1", local_files_only=True)
    assert seen["name"] == "Senqiao/VisionThink-Efficient"
    assert seen["kwargs"] == {
        "dtype": torch.bfloat16,
        "attn_implementation": "flash_attention_2",
        "local_files_only": True,
        "revision": "abc123",
        "device_map": {"": "cuda:1"},
    }
    assert seen["to"] == torch.device("cuda", 1) and seen["eval"]


def test_flash_attention_is_off_without_flash_attn():
    if hf.torchvision_works():  # a GPU host may have it; only check the bare CPU environment
        pytest.skip("GPU-style environment")
    assert hf._flash_attention_works() is False


# --- check_available -------------------------------------------------------------------------------------------


def test_check_available_accepts_the_tiny_folder_without_asking_the_hub(tiny_model_dir, hub):
    hf.check_available(str(tiny_model_dir))
    hf.check_available(tiny_model_dir)
    assert hub.asked == []


def test_check_available_rejects_bad_folders(tmp_path):
    with pytest.raises(hf.ModelUnavailable, match="no config.json"):
        hf.check_available(str(tmp_path))
    with pytest.raises(hf.ModelUnavailable, match="no folder"):
        hf.check_available(str(tmp_path / "missing" / "model"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(hf.ModelUnavailable, match="is a file"):
        hf.check_available(str(tmp_path / "weights.bin"))
    with pytest.raises(hf.ModelUnavailable, match="valid Hugging Face Hub id"):
        hf.check_available("not a model id!")
    with pytest.raises(hf.ModelUnavailable):
        hf.check_available("")


def test_check_available_offline_fails_without_asking_the_hub(hub, online):
    online.setenv("HF_HUB_OFFLINE", "1")  # the variable alone: huggingface_hub's own switch stays off
    with pytest.raises(hf.ModelUnavailable, match="HF_HUB_OFFLINE"):
        hf.check_available("visionthink-tests/does-not-exist-anywhere")
    assert hub.asked == []


def _fake_cached_repo(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_text(content)


def test_check_available_uses_the_cache_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_cached_repo(cache, "org/single", {"config.json": "{}", "model.safetensors": "x"})
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    _fake_cached_repo(
        cache, "org/sharded", {"config.json": "{}", "model.safetensors.index.json": index, "model-1.safetensors": "x"}
    )
    _fake_cached_repo(cache, "org/config-only", {"config.json": "{}"})

    hf.check_available("org/single")
    with pytest.raises(hf.ModelUnavailable, match="only partly"):
        hf.check_available("org/sharded")
    with pytest.raises(hf.ModelUnavailable, match="only partly"):
        hf.check_available("org/config-only")
    (cache / "models--org--sharded" / "snapshots" / ("0" * 40) / "model-2.safetensors").write_text("x")
    hf.check_available("org/sharded")


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers HEAD for known/model's files (200) and nothing else (404); records every request it is sent."""

    def parse_request(self):
        parsed = super().parse_request()
        self.server.asked.append(f"{self.command} {self.path}")
        return parsed

    def do_HEAD(self):  # noqa: N802 - http.server API
        if "/known/model/" in self.path:
            self.send_response(200)
            self.send_header("ETag", '"abc"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("Content-Length", "2")
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Hub access on, an empty cache, whatever this machine's network is."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return monkeypatch


@pytest.fixture
def hub(online):
    """A local stand-in for the Hub as HF_ENDPOINT, Hub access on; ``hub.asked`` lists the requests it got."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    server.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def test_check_available_online_answers_from_the_hub(hub):
    hf.check_available("known/model", timeout=5)
    with pytest.raises(hf.ModelUnavailable, match="There is no model"):
        hf.check_available("unknown/model", timeout=5)
    assert [request.split("/")[-1] for request in hub.asked] == ["config.json", "config.json"]  # once each


def test_check_available_gives_up_on_a_silent_hub(online):
    """A server that accepts the connection and never answers: the probe asks once, then gives up after its
    timeout (how long that takes is measured by bench/hub_check_bench.py)."""
    with SilentServer() as silent:
        online.setenv("HF_ENDPOINT", silent.url)
        with pytest.raises(hf.ModelUnavailable, match=r"did not answer within 1 s|could not be reached \(ReadTimeout"):
            hf.check_available("some-org/some-model", timeout=1.0)
        assert silent.connections() == 1


def test_check_available_says_when_the_hub_cannot_be_reached(online):
    online.setenv("HF_ENDPOINT", refused_url())
    with pytest.raises(hf.ModelUnavailable, match=r"could not be reached \(ConnectError.*Check the network"):
        hf.check_available("visionthink-tests/does-not-exist-anywhere", timeout=3.0)
