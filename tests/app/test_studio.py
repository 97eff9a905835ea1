"""The whole app as served (public page at /, studio at /studio behind Gradio's login) driven with gradio_client:
asking stores answers, rating, the annotation queue, the dashboard, and who may do what."""

from __future__ import annotations

import zipfile

import pytest
from PIL import Image
from gradio_client import Client, handle_file

from store.api import Actor, Store
from tests.app.conftest import PASSWORDS, serve_studio

STUDIO_ENDPOINTS = {"/annotate_correct", "/annotate_incorrect", "/annotate_unsure", "/annotate_skip",
                    "/annotate_back", "/annotate_undo", "/dashboard", "/resolve", "/export"}


def endpoints(client: Client) -> set[str]:
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def login(url: str, name: str) -> Client:
    return Client(f"{url}/studio/", auth=(name, PASSWORDS[name]), verbose=False)


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    with serve_studio(tiny_model_dir, tmp) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


def ask(client: Client, image, question: str, consent: bool = True, mode: str = "auto"):
    return client.predict(handle_file(str(image)), question, mode, consent, api_name="/ask")


def test_public_page_asks_and_stores_but_offers_nothing_else(studio, chart):
    url, db = studio
    public = Client(f"{url}/", verbose=False)
    assert endpoints(public) == {"/ask", "/compare", "/rate_correct", "/rate_incorrect", "/rate_comparison"}
    error, badge, *_ = ask(public, chart, "Public question?", consent=False)
    assert error == "" and "Asked for the full-resolution image" in badge
    refused = public.predict("", None, api_name="/rate_correct")
    assert "sign in to rate" in refused
    store = Store(db, upgrade=False)
    stored = [i.ask for i in store.rated_asks(Actor.system(), consented_only=False)]
    mine = [a for a in stored if a.question == "Public question?"]
    assert len(mine) == 1 and mine[0].consent is False and mine[0].requested_high_res is True
    assert mine[0].tokens.used == 240 and mine[0].model_id == "tiny-forced"
    assert [t.turn.kind for t in mine[0].turns] == ["tool_call", "answer"]
    store.close()


def test_studio_needs_a_password(studio):
    url, _ = studio
    with pytest.raises(Exception, match="credentials"):
        Client(f"{url}/studio/", verbose=False)
    with pytest.raises(Exception):
        Client(f"{url}/studio/", auth=("ann", "wrong"), verbose=False)


def test_annotator_rates_from_ask_and_works_the_queue(studio, chart):
    url, db = studio
    ann = login(url, "ann")
    assert STUDIO_ENDPOINTS <= endpoints(ann)
    error, *_ = ask(ann, chart, "How many bars are there?")
    assert error == ""
    saved = ann.predict("12", "needed_full", api_name="/rate_incorrect")
    assert "rating is saved" in saved

    first = ann.predict("", None, "", api_name="/annotate_correct")  # nothing loaded yet: shows the next item
    progress, message, image, header, tokens, chat, reference = first[:7]
    assert "Item #" in header and progress == "**Item 1 of 1** · 0 done · 1 left"
    assert Image.open(image).size == (448, 336)  # the original, downloaded by the client
    assert "visual tokens used" in tokens
    assert reference == "The value is \\boxed{44.6}"  # pre-filled with the model's answer
    item = int(header.split("Item #")[1].split(" ")[0])
    after = ann.predict("44.6", "needed_full", "clear after zoom", api_name="/annotate_correct")
    assert f"Saved: #{item} is correct." in after[1]
    store = Store(db, upgrade=False)
    view = store.get_ask(Actor.system(), item)
    mine = [r for r in view.ratings if r.rater == "ann" and r.source == "annotation"]
    assert [(r.verdict, r.reference_answer, r.decision, r.comment) for r in mine] == [
        ("correct", "44.6", "needed_full", "clear after zoom")]
    thumbs = [r for r in store.get_ask(Actor.system(), view.id).ratings if r.source == "thumbs"]
    assert all(r.rater == "ann" for r in thumbs)
    store.close()


def test_dashboard_counts_ratings(studio, chart):
    url, _ = studio
    ada = login(url, "ada")
    ask(ada, chart, "Dashboard question?")
    ada.predict("", None, "", api_name="/annotate_correct")
    ada.predict("44.6", "needed_full", "", api_name="/annotate_correct")
    summary, versions, *_rest, latest, annotators = ada.predict(api_name="/dashboard")
    assert "ratings on" in summary
    assert versions["data"][0][0] == "tiny-forced"
    assert any(row[3] == "correct" for row in latest["data"])
    assert all(row[-1] == "—" for row in latest["data"])  # annotators don't see who rated


def test_annotator_cannot_use_admin_handlers(studio):
    url, _ = studio
    ann = login(url, "ann")
    message, archive, _report = ann.predict("grpo", "", api_name="/export")
    assert "Only admin users may export data" in message and archive is None
    refused = ann.predict(1, "correct", "unsure", "x", api_name="/resolve")
    assert "Only admin users may resolve disagreements" in refused[0]


def test_admin_resolves_and_exports(studio, chart, tmp_path):
    url, db = studio
    root = login(url, "root")
    ask(root, chart, "Which quarter is highest?")
    store = Store(db, upgrade=False)
    target = max(i.ask.id for i in store.rated_asks(Actor.system()))
    store.rate(Actor("ada", "annotator"), target, verdict="correct", reference_answer="Q4")
    store.rate(Actor("ann", "annotator"), target, verdict="incorrect", reference_answer="Q3")
    assert target in [v.id for v in store.disputed(Actor.system())]
    resolved, _picker, disputes, *_item = root.predict(target, "incorrect", "needed_full", "Q3",
                                                      api_name="/resolve")
    assert f"Item #{target} is resolved" in resolved
    assert target not in [row[0] for row in disputes["data"]]
    assert store.get_ask(Actor.system(), target).consensus.reference_answer == "Q3"

    message, archive, _report = root.predict("grpo", "", api_name="/export")
    assert "Exported" in message
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert "README.md" in names and any(n.endswith(".arrow") for n in names)
    bad, none, _report = root.predict("grpo", "yesterday", api_name="/export")
    assert "not a date" in bad and none is None
    store.close()
