"""Exports from a real SQLite store: GRPO/KTO/DPO/JSONL contents, consent, determinism, atomicity and the CLI."""

from __future__ import annotations

import contextlib

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from store import export as store_export
from store.api import Actor, PermissionDenied, Store, encode_png
from store.export import CONSENSUS_RULE, export, main
from store.models import Rating
from visionthink import protocol
from visionthink.engine import Answer, TurnRecord
from tests.store.conftest import BACKENDS
from tests.support.postgres import fresh_database
from visionthink.images import TokenReport, downsample

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Senqiao/VisionThink-Efficient"
SECRET = "SECRET question about the private photo"
ANN1, ANN2, ADMIN = Actor("ann1", "annotator"), Actor("ann2", "annotator"), Actor("boss", "admin")

DIRECT = "<think>The square is clearly red.</think>\n<answer>red</answer>"
RESIZE_1 = "<think>The dots are too small to count.</think>\n" + protocol.tool_call_text()
RESIZE_2 = "<think>I count three dots.</think>\n<answer>\\boxed{3}</answer>"
BAD_CALL = '<think>Let me zoom.</think>\n<tool_call>\n{"name": "zoom", "arguments": {"action": "resize"}}\n</tool_call>'


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def answer(question: str, texts: list[str], mode: str = "auto") -> Answer:
    turns = []
    for index, text in enumerate(texts):
        turns.append(TurnRecord(index=index, turn=protocol.parse_turn(text), latency_s=0.5, generated_tokens=20,
                                finish_reason="stop", prompt_tokens=300, image_tokens=[12]))
    resized = mode == "auto" and any(t.turn.kind == "tool_call" for t in turns[:-1])
    tokens = TokenReport.build(low_res=0 if mode == "high" else 12, high_res=48 if resized or mode == "high" else 0,
                               full_res=48)
    final = turns[-1].turn
    return Answer(question=question, mode=mode, model=MODEL, turns=turns,
                  final_answer=final.answer if final.kind == "answer" else None, requested_high_res=resized,
                  tokens=tokens, latency_s=1.25, stop_reason="answer", original_size=(64, 48))


def rate_both(store: Store, ask_id: int, verdict: str, refs=(None, None), decisions=(None, None)) -> None:
    for actor, ref, decision in zip((ANN1, ANN2), refs, decisions):
        store.rate(actor, ask_id, verdict=verdict, reference_answer=ref, decision=decision)


def thumbs(store: Store, ask_id: int, *votes: tuple[str, str]) -> None:
    """Thumbs from several visitors on one answer. ``Store.rate`` now takes thumbs from the asker only, but stores
    from before that hold such votes, and exports must still count them; so they are written as rows."""
    with store.db.write() as s:
        for session, verdict in votes:
            s.add(Rating(ask_id=ask_id, rater=Actor.anonymous(session).rater, source="thumbs", verdict=verdict,
                         comment=""))
            s.flush()  # one INSERT per vote, in order: the latest per rater counts


class Data:
    """The stored answers every test exports (built once per module)."""

    def __init__(self, store: Store, url: str, path: Path) -> None:
        self.store, self.url, self.path = store, url, path
        self.images = {name: picture(seed) for seed, name in enumerate("ABCDEFGH")}
        self.png = {name: encode_png(image) for name, image in self.images.items()}
        self.sha = {name: hashlib.sha256(png).hexdigest() for name, png in self.png.items()}
        sys_actor = Actor.system()

        def record(name: str, a: Answer, consent: bool = True) -> int:
            return store.record(a, self.images[name], sys_actor, consent=consent)

        # A: a direct answer both annotators judge correct; one spells the reference.
        self.a = record("A", answer("What colour is the square?", [DIRECT]))
        rate_both(store, self.a, "correct", refs=("Red", None), decisions=("low_enough", "low_enough"))
        # B1: a resize episode judged wrong and corrected (references equal after normalising).
        self.b1 = record("B", answer("How many dots are there?", [RESIZE_1, RESIZE_2]))
        rate_both(store, self.b1, "incorrect", refs=("\\boxed{4}.", "\\boxed{4}"), decisions=("needed_full",) * 2)
        # B2: the same image and question (other case), in "high" mode, answered right: merged with B1 in GRPO.
        self.b2 = record("B", answer("how many dots are there?", ["<think>Four.</think><answer>\\boxed{4}</answer>"],
                                     mode="high"))
        rate_both(store, self.b2, "correct")
        # C: disputed.
        self.c = record("C", answer("Is the light on?", ["<think>Lit.</think><answer>Yes</answer>"]))
        store.rate(ANN1, self.c, verdict="correct")
        store.rate(ANN2, self.c, verdict="incorrect", reference_answer="No")
        # D1, D2: each has a consensus, but their references for the same question disagree.
        self.d1 = record("D", answer("What animal is shown?", ["<think>Wings.</think><answer>bird</answer>"]))
        rate_both(store, self.d1, "incorrect", refs=("cat", "cat"))
        self.d2 = record("D", answer("What animal is shown?", ["<think>Feathers.</think><answer>bird</answer>"]))
        rate_both(store, self.d2, "incorrect", refs=("dog", "dog"))
        # E: thumbs only, 2 up (s1's latest) to 1 down.
        self.e = record("E", answer("What is written on the sign?", ["<think>Letters.</think><answer>STOP</answer>"]))
        thumbs(store, self.e, ("s1", "incorrect"), ("s1", "correct"), ("s2", "correct"), ("s3", "incorrect"))
        # G: thumbs tie.
        self.g = record("G", answer("Is it raining?", ["<think>Wet.</think><answer>yes</answer>"]))
        thumbs(store, self.g, ("s1", "correct"), ("s2", "incorrect"))
        # H: an invalid tool call answered with an error turn, then an answer judged correct.
        self.h = record("H", answer("What shape is it?", [BAD_CALL, "<think>Round.</think><answer>circle</answer>"]))
        rate_both(store, self.h, "correct")
        # F: fully rated but not consented: must never leave the store.
        self.f = record("F", answer(SECRET, ["<think>Private.</think><answer>secret</answer>"]), consent=False)
        rate_both(store, self.f, "correct", refs=("secret", "secret"), decisions=("needed_full",) * 2)


@pytest.fixture(scope="module", params=BACKENDS)
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Data:
    """The same stored answers on a SQLite file and on a fresh PostgreSQL database: every test runs on both."""
    folder = tmp_path_factory.mktemp("store")
    if request.param == "sqlite":
        database = contextlib.nullcontext(f"sqlite:///{folder}/db.sqlite")
    else:
        database = fresh_database(request.getfixturevalue("postgres_url"))
    with database as url:
        store = Store(url, anonymous_thumbs=True)
        yield Data(store, url, folder / "db.sqlite")
        store.close()


@pytest.fixture(scope="module")
def exports(data: Data, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every format exported once, with the progress reports each export made."""
    root = tmp_path_factory.mktemp("exports")
    results = {}
    for fmt in store_export.FORMATS:
        ticks: list[tuple[int, int]] = []
        results[fmt] = (export(data.store, Actor.system(), fmt, root / fmt, progress=lambda d, t: ticks.append((d, t))),
                        ticks)
    return results


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def raw_images(ds: datasets.Dataset) -> list[list[bytes]]:
    table = ds.with_format("arrow")[:]
    return [[image["bytes"] for image in row] for row in table.column("images").to_pylist()]


def texts(messages: list[dict]) -> list[tuple[str, str]]:
    def text(part: dict) -> str:
        return protocol.IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"]

    return [(m["role"], "".join(text(p) for p in m["content"])) for m in messages]


# --- GRPO -------------------------------------------------------------------------------------------------------


def test_grpo_round_trip_through_load_from_disk(data: Data, exports: dict) -> None:
    result, ticks = exports["grpo"]
    assert result.path.is_symlink() and result.path.resolve() == result.version.resolve()
    ds = datasets.load_from_disk(str(result.path))
    assert ds.features == store_export.GRPO_FEATURES
    rows = {row["doc_id"]: row for row in ds.with_format("arrow")[:].drop_columns(["images"]).to_pylist()}
    key = lambda q: hashlib.sha256(" ".join(q.lower().split()).rstrip(" .").encode()).hexdigest()[:16]  # noqa: E731
    doc = {name: f"{data.sha[name][:16]}-{key(q)}" for name, q in
           [("A", "What colour is the square?"), ("B", "How many dots are there?"), ("H", "What shape is it?")]}
    assert sorted(rows) == sorted(doc.values()) == list(rows)  # sorted by doc_id, one row per (image, question)
    assert rows[doc["A"]] == {"problem": "<image>\nWhat colour is the square?", "original_answer": "Red",
                              "solution": "Red", "needs_high_res": False, "data_source": "visionthink_studio",
                              "doc_id": doc["A"]}
    b = rows[doc["B"]]
    assert b["problem"] == protocol.problem_text("How many dots are there?")  # the oldest answer's spelling
    assert b["original_answer"] == "\\boxed{4}" and b["solution"] == "4" and b["needs_high_res"] is True
    assert rows[doc["H"]]["original_answer"] == "circle" and rows[doc["H"]]["needs_high_res"] is None
    images = dict(zip(list(rows), raw_images(ds)))
    assert images == {doc["A"]: [data.png["A"]], doc["B"]: [data.png["B"]], doc["H"]: [data.png["H"]]}
    assert ds[0]["images"][0].size == (64, 48)  # decodes as a PIL image
    assert result.rows == 3
    assert result.skipped == {"awaiting_ratings": 2, "disputed": 1, "no_consent": 1, "references_disagree": 2}
    assert {"README.md", "data.parquet", "state.json", "dataset_info.json"} <= set(result.files)
    assert ticks[-1][0] == ticks[-1][1] and all(b[0] >= a[0] for a, b in zip(ticks, ticks[1:]))


def test_grpo_parquet_holds_the_same_rows(exports: dict, tmp_path: Path) -> None:
    result, _ = exports["grpo"]
    arrow = datasets.load_from_disk(str(result.path))
    parquet = datasets.load_dataset("parquet", data_files=str(result.path / "data.parquet"), split="train",
                                    cache_dir=str(tmp_path / "hf-cache"))
    assert parquet.features == arrow.features
    assert parquet.with_format("arrow")[:].to_pylist() == arrow.with_format("arrow")[:].to_pylist()
    assert pq.read_table(result.path / "data.parquet").num_rows == 3


def test_dataset_card_states_counts_rule_and_models(exports: dict) -> None:
    card = (exports["grpo"][0].path / "README.md").read_text(encoding="utf-8")
    assert CONSENSUS_RULE.startswith("How several people's ratings") and CONSENSUS_RULE in card
    assert "| Rows | 3 |" in card and "| `references_disagree` | 2 |" in card and "| `no_consent` | 1 |" in card
    assert f"| `{MODEL}` | `-` | 4 |" in card  # A, B1, B2, H
    assert "load_from_disk" in card and "Ratings needed per answer: 2" in card


# --- KTO, DPO, JSONL ------------------------------------------------------------------------------------------------


def test_kto_rows_labels_and_conversations(data: Data, exports: dict) -> None:
    result, _ = exports["kto"]
    ds = datasets.load_from_disk(str(result.path))
    rows = ds.with_format("arrow")[:].drop_columns(["images"]).to_pylist()
    questions = [texts(r["prompt"])[1][1].rsplit("\n", 1)[1] for r in rows]
    assert questions == ["What colour is the square?", "How many dots are there?", "how many dots are there?",
                         "What animal is shown?", "What animal is shown?", "What is written on the sign?",
                         "What shape is it?"]  # A B1 B2 D1 D2 E H, in the order they were asked
    assert [r["label"] for r in rows] == [True, False, True, False, False, True, True]
    assert result.skipped == {"disputed": 1, "no_consent": 1, "no_label": 1}

    # B1: the resize episode, up to its final turn, with the 1/4 view and the full image.
    conversation = protocol.Conversation.start("How many dots are there?")
    conversation.add_model_turn(RESIZE_1)
    conversation.add_tool_response()
    assert texts(rows[1]["prompt"]) == [(m.role, m.text) for m in conversation.messages]
    assert rows[1]["completion"] == [{"role": "assistant", "content": RESIZE_2}]
    images = raw_images(ds)
    assert images[1] == [encode_png(downsample(data.images["B"])), data.png["B"]]
    assert images[0] == [encode_png(downsample(data.images["A"]))]
    assert images[2] == [data.png["B"]]  # "high" mode: the full image only
    # H: the invalid call was answered with the error turn the engine sends.
    reason = protocol.parse_turn(BAD_CALL).reason
    assert texts(rows[6]["prompt"])[3] == ("user", protocol.error_response_message(reason.rstrip(".")))
    assert len(images[6]) == 1


def test_kto_prompts_render_with_the_stock_template_as_trained(exports: dict) -> None:
    """What TRL feeds the Qwen2.5-VL chat template is the trained text, except the newline that docs/protocol.md §5
    notes."""
    from transformers.utils.chat_template_utils import render_jinja_template
    from trl.data_utils import prepare_multimodal_messages

    from visionthink.tiny import stock_chat_template

    row = datasets.load_from_disk(str(exports["kto"][0].path))[1]  # B1, the resize episode
    messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=stock_chat_template(),
                                        add_generation_prompt=True)
    conversation = protocol.Conversation.start("How many dots are there?")
    conversation.add_model_turn(RESIZE_1)
    conversation.add_tool_response()
    trained = conversation.render()
    boundary = protocol.IM_END + protocol.IM_START + "user"
    assert trained.count(boundary) == 1
    assert rendered[0] == trained.replace(boundary, protocol.IM_END + "\n" + protocol.IM_START + "user")


def test_dpo_pairs_only_for_corrected_answers(exports: dict) -> None:
    result, _ = exports["dpo"]
    ds = datasets.load_from_disk(str(result.path))
    rows = ds.with_format("arrow")[:].drop_columns(["images"]).to_pylist()
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("<think>I count three dots.</think><answer>\\boxed{4}</answer>", RESIZE_2),
        ("<think>Wings.</think><answer>cat</answer>", "<think>Wings.</think><answer>bird</answer>"),
        ("<think>Feathers.</think><answer>dog</answer>", "<think>Feathers.</think><answer>bird</answer>"),
    ]
    assert all(protocol.parse_turn(r["chosen"][0]["content"]).kind == "answer" for r in rows)
    assert [len(i) for i in raw_images(ds)] == [2, 1, 1]
    assert result.skipped == {"awaiting_ratings": 2, "disputed": 1, "no_consent": 1, "verdict_correct": 3}
    assert "reasoning in `chosen` is the model's" in (result.path / "README.md").read_text(encoding="utf-8")


def test_jsonl_has_every_consented_answer_and_its_ratings(data: Data, exports: dict) -> None:
    result, _ = exports["jsonl"]
    items = [json.loads(line) for line in (result.path / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [i["id"] for i in items] == [data.a, data.b1, data.b2, data.c, data.d1, data.d2, data.e, data.g, data.h]
    b1 = items[1]
    assert b1["image"]["file"] == f"images/{data.sha['B']}.png" and b1["requested_high_res"] is True
    assert [t["text"] for t in b1["turns"]] == [RESIZE_1, RESIZE_2] and b1["model"] == {"id": MODEL, "revision": ""}
    refs = [(r["rater"], r["reference_answer"]) for r in b1["ratings"]]
    assert refs == [("ann1", "\\boxed{4}."), ("ann2", "\\boxed{4}")]
    assert b1["consensus"]["verdict"] == "incorrect" and b1["consensus"]["needs_high_res"] is True
    assert [r["rater"] for r in items[6]["ratings"]] == ["anon:s1", "anon:s1", "anon:s2", "anon:s3"]
    images = sorted(f for f in result.files if f.startswith("images/"))
    assert images == sorted(f"images/{data.sha[n]}.png" for n in "ABCDEGH")
    assert all((result.path / f).read_bytes() == data.png[n] for n in "ABCDEGH" for f in [f"images/{data.sha[n]}.png"])


def test_unconsented_answers_never_leave_the_store(data: Data, exports: dict) -> None:
    secret_png, secret_low = data.png["F"], encode_png(downsample(data.images["F"]))
    for fmt, (result, _) in exports.items():
        for name, content in tree(result.path).items():
            for needle in (SECRET.encode(), data.sha["F"].encode(), secret_png, secret_low):
                assert needle not in content, (fmt, name)
        if fmt != "jsonl":
            for ds in (datasets.load_from_disk(str(result.path)),
                       datasets.Dataset.from_parquet(str(result.path / "data.parquet"))):
                assert SECRET not in json.dumps(ds.with_format("arrow")[:].drop_columns(["images"]).to_pylist())
                assert secret_png not in [png for row in raw_images(ds) for png in row]


# --- Determinism and atomicity -----------------------------------------------------------------------------------


def test_two_exports_of_the_same_data_are_byte_identical(data: Data, exports: dict, tmp_path: Path) -> None:
    for fmt, (first, _) in exports.items():
        again = export(data.store, Actor.system(), fmt, tmp_path / "elsewhere" / fmt)
        assert tree(again.path) == tree(first.path), fmt
        assert again.version.name == first.version.name
    # Exporting to the same link again keeps the same version and leaves nothing else behind.
    first = exports["grpo"][0]
    again = export(data.store, Actor.system(), "grpo", first.path)
    assert again.version == first.version
    assert sorted(p.name for p in first.version.parent.iterdir()) == [".lock", first.version.name]


#: An export in a process of its own whose progress callback, one step before the end (while rows are being written),
#: says so and waits to be killed: the kill lands midway however slow the machine is.
STOPPED_MIDWAY = """
import sys
from pathlib import Path

from store.api import Actor, Store
from store.export import export


def progress(done, total):
    if done == total - 1:
        print("midway", flush=True)
        sys.stdin.read()


export(Store(sys.argv[1]), Actor.system(), "grpo", Path(sys.argv[2]), progress=progress)
"""


def test_a_killed_export_leaves_the_previous_one_readable(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "grpo"
    previous = export(data.store, Actor.system(), "grpo", out)
    before = tree(out)
    command = [sys.executable, "-c", STOPPED_MIDWAY, data.url, str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    versions = out.parent / ".grpo.versions"
    try:
        assert process.stdout.readline() == "midway\n", process.stderr.read()
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert list(versions.glob(".partial-*")), "the export was not stopped midway"
    assert os.readlink(out) == f".grpo.versions/{previous.version.name}"
    assert tree(out) == before
    assert len(datasets.load_from_disk(str(out))) == 3
    # The next export succeeds and clears what the stopped one left.
    export(data.store, Actor.system(), "grpo", out)
    assert not list(versions.glob(".partial-*"))


def test_an_export_that_fails_midway_changes_nothing(data: Data, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "kto"
    export(data.store, Actor.system(), "kto", out)
    before, link = tree(out), os.readlink(out)

    def fail(done: int, total: int) -> None:
        if done == 3:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        export(data.store, Actor.system(), "kto", out, progress=fail)
    assert os.readlink(out) == link and tree(out) == before
    assert not list((tmp_path / ".kto.versions").glob(".partial-*"))  # cleaned up on the way out


def test_a_real_folder_at_out_is_never_replaced(data: Data, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    with pytest.raises(store_export.ExportError, match="not an export link"):
        export(data.store, Actor.system(), "jsonl", tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_an_empty_export_never_silently_replaces_one_with_rows(data: Data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grpo"
    good = export(data.store, Actor.system(), "grpo", out)
    assert good.rows == 3 and store_export.current_rows(out) == 3
    before, link = tree(out), os.readlink(out)
    future = datetime(2999, 1, 1, tzinfo=timezone.utc)

    with pytest.raises(store_export.EmptyExportRefused, match="has 0 rows and would replace .* which has 3 rows") as refused:
        export(data.store, Actor.system(), "grpo", out, since=future)
    counts = refused.value.counts
    assert (counts.rows, counts.answers, counts.considered, counts.skipped) == (0, 0, 0, {"before_since": 10})
    assert refused.value.current_rows == 3
    assert os.readlink(out) == link and tree(out) == before
    assert sorted(p.name for p in (tmp_path / ".grpo.versions").iterdir()) == [".lock", good.version.name]

    command = ["--format", "grpo", "--out", str(out), "--since", "2999-01-01", "--db", data.url]
    assert main(command) == 1
    assert "0 rows and would replace" in capsys.readouterr().err and tree(out) == before
    assert main(command + ["--replace-with-empty"]) == 0
    assert store_export.current_rows(out) == 0
    assert "| `before_since` | 10 | asked before the export's since-date |" in (out / "README.md").read_text()

    # an empty export may replace an empty one, and any export with rows replaces it
    assert export(data.store, Actor.system(), "grpo", out, since=future).rows == 0
    assert export(data.store, Actor.system(), "grpo", out).version == good.version


# --- Access, filters and the command line ------------------------------------------------------------------------


def test_only_admins_may_export_and_nothing_is_written_otherwise(data: Data, tmp_path: Path) -> None:
    for actor in (ANN1, Actor.anonymous("s1"), Actor("viewer", "viewer")):
        with pytest.raises(PermissionDenied):
            export(data.store, actor, "grpo", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    assert export(data.store, ADMIN, "jsonl", tmp_path / "out").rows == 9


def test_since_filters_by_when_the_answer_was_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = Store(url)
    old = store.record(answer("Old question?", [DIRECT]), picture(1), Actor.system(), consent=True)
    new = store.record(answer("New question?", [DIRECT]), picture(2), Actor.system(), consent=True)
    store.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("UPDATE asks SET created_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (old,))
    assert main(["--format", "jsonl", "--out", str(tmp_path / "recent"), "--since", "2024-01-01", "--db", url]) == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "recent" / "items.jsonl").open()] == [new]
    assert "2024-01-01T00:00:00+00:00" in (tmp_path / "recent" / "README.md").read_text(encoding="utf-8")
    store = Store(url)
    try:
        # 2019-12-31 22:00 UTC, written in UTC+5: compared as UTC, so the 2020 answer is in.
        since = datetime(2020, 1, 1, 3, tzinfo=timezone(timedelta(hours=5)))
        assert export(store, Actor.system(), "jsonl", tmp_path / "all", since=since).rows == 2
        # Nothing rated yet: an empty GRPO export is still a loadable dataset.
        empty = export(store, Actor.system(), "grpo", tmp_path / "empty")
        assert empty.rows == 0 and empty.skipped == {"awaiting_ratings": 2}
        assert len(datasets.load_from_disk(str(empty.path))) == 0
        assert pq.read_table(empty.path / "data.parquet").num_rows == 0
    finally:
        store.close()


@pytest.mark.parametrize("args, message", [
    (["--format", "xml", "--out", "{tmp}/x"], "invalid choice"),
    (["--format", "grpo"], "required: --out"),
    (["--format", "grpo", "--out", "{tmp}/x", "--since", "2024-13-01", "--db", "{url}"], "YYYY-MM-DD"),
    (["--format", "grpo", "--out", "{tmp}/x", "--since", "yesterday", "--db", "{url}"], "YYYY-MM-DD"),
    (["--format", "grpo", "--out", "{tmp}", "--db", "{url}"], "not an export link"),
    (["--format", "grpo", "--out", "{tmp}/x", "--db", "sqlite:///{tmp}/missing.sqlite"], "no database"),
    (["--format", "grpo", "--out", "{tmp}/x", "--db", "not a url"], "not a database URL"),
])
def test_bad_arguments_exit_2_with_one_line(data: Data, tmp_path: Path, capsys, args, message) -> None:
    argv = [a.format(tmp=tmp_path, url=data.url) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.versions").exists()
