"""The feedback loop, end to end, on the miniature (``make demo-loop``):

    python -m train.demo_loop [--out runs/demo-loop] [--asks 240] [--after 60] [--seed 7]

1. serve the uninformed warm start (``visionthink-miniature-start``) in the app (``python app.py`` on 127.0.0.1)
   and ask it questions about freshly drawn images through the page's API, allowing training use;
2. two annotators rate every answer through the store's API, as the annotation queue offers them: the verdict,
   the reference answer, and whether the full image was needed (pattern questions: yes; colour and shape: no);
3. ``python -m train.retrain`` with the miniature's GRPO recipe: export, hold out, train, evaluate the new
   checkpoint against the start on the held-out items, register it;
4. serve the new version, ask and rate fresh questions, so the dashboard compares both versions side by side;
5. print the before/after table: held-out request ratio and accuracy per group, and the dashboard's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANNOTATORS = ("ann", "bob")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model: Path, db_url: str, log_path: Path):
    """``python app.py`` serving ``model``; yields the page's URL once it answers."""
    import httpx

    port = free_port()
    env = {**os.environ, "VISIONTHINK_MODEL": str(model), "VISIONTHINK_DB_URL": db_url, "VISIONTHINK_FALLBACK": "none",
           "VISIONTHINK_DEVICE": "cpu", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("VISIONTHINK_USERS", None)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The app stopped (exit code {process.returncode}); see {log_path}.")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The app did not answer within 120 s; see {log_path}.")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def image_key(image) -> str:
    """The store's name for an image (the SHA-256 of its cleaned PNG), so an annotator can tell what it shows."""
    from store.api import encode_png

    return hashlib.sha256(encode_png(image)).hexdigest()


def ask_through_the_page(url: str, items, folder: Path) -> None:
    from gradio_client import Client, handle_file

    client = Client(f"{url}/", verbose=False)
    folder.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(items):
        path = folder / f"{index:04d}.png"
        item.image.save(path)
        error, *_ = client.predict(handle_file(str(path)), item.question, "auto", True, api_name="/ask")
        if error:
            raise RuntimeError(f"The page refused item {index}: {error}")


def annotate(store, truth: dict) -> int:
    """Rate every answer in the queue as the annotators would; returns the number of ratings."""
    from store.api import Actor
    from visionthink.miniature import task

    ratings = 0
    for name in ANNOTATORS:
        annotator = Actor(name, "annotator")
        while (view := store.next_ask(annotator)) is not None:
            item = truth[view.image_sha256]
            right = (view.answer or "").strip().lower() == item.answer
            store.rate(annotator, view.id, verdict="correct" if right else "incorrect", reference_answer=item.answer,
                       decision="needed_full" if item.kind in task.FINE_KINDS else "low_enough")
            ratings += 1
    return ratings


def dashboard_rows(store) -> list[dict]:
    from store.api import Actor

    board = store.dashboard(Actor("admin", "admin"))
    return [{"model": Path(v.model_id).name, "asks": v.asks, "judged": v.judged, "accuracy": v.accuracy,
             "high_res_ratio": v.high_res_ratio} for v in board.versions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-loop"))
    parser.add_argument("--asks", type=int, default=240, help="questions asked of the start (default 240)")
    parser.add_argument("--after", type=int, default=60, help="questions asked of the new version (default 60)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the drawn images (never one training used)")
    parser.add_argument("--max-steps", type=int, help="GRPO steps (default: the recipe's)")
    args = parser.parse_args(argv)

    from store.api import Store
    from visionthink.miniature import model as miniature_model, task

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "studio.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    app_log = out / "app.log"
    items = task.sample(args.asks, args.seed)
    after = task.sample(args.after, args.seed + 1)
    truth = {image_key(i.image): i for i in items + after}

    print(f"1/5 Serving {miniature_model.START_DIR.name} and asking {len(items)} questions through the page …")
    with serve(miniature_model.START_DIR, url, app_log) as page:
        ask_through_the_page(page, items, out / "uploads" / "before")
    store = Store(url)
    print(f"2/5 Annotating: {annotate(store, truth)} ratings by {', '.join(ANNOTATORS)} …")
    store.close()

    print("3/5 python -m train.retrain …")
    retrain_dir = out / "retrain"
    command = [sys.executable, "-m", "train.retrain", "--recipe", "train/recipes/miniature.yaml",
               "--base", str(miniature_model.START_DIR), "--db", url, "--out", str(retrain_dir), "--judge", "rule",
               "--eval-fraction", "0.25", "--eval-modes", "auto"]
    if args.max_steps:
        command += ["--", "--max_steps", str(args.max_steps)]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    if result.returncode != 0:
        print(f"error: train.retrain stopped with exit code {result.returncode}.", file=sys.stderr)
        return 1
    checkpoint = retrain_dir / "checkpoint"

    print(f"4/5 Serving the new version and asking {len(after)} fresh questions …")
    with serve(checkpoint, url, app_log) as page:
        ask_through_the_page(page, after, out / "uploads" / "after")
    store = Store(url)
    annotate(store, truth)
    versions = dashboard_rows(store)
    store.close()

    comparison = json.loads((retrain_dir / "comparison.json").read_text())
    print("\n5/5 Before and after")
    print(f"\nHeld-out items ({comparison['held_out_rows']}), greedy, auto mode, by the annotators' decision label:")
    print(f"{'group':<18} {'model':<8} {'items':>6} {'asks for full image':>20} {'accuracy':>9}")
    for group, rows in comparison["by_kind"].get("auto", {}).items():
        for name, row in rows.items():
            print(f"{group:<18} {name:<8} {row['items']:>6} {_pct(row['high_res_ratio']):>20} {_pct(row['accuracy']):>9}")
    print("\nThe dashboard's model versions (every rated answer each one gave):")
    print(f"{'model':<40} {'asks':>5} {'accuracy':>9} {'asks for full image':>20}")
    for row in versions:
        print(f"{row['model']:<40} {row['asks']:>5} {_pct(row['accuracy']):>9} {_pct(row['high_res_ratio']):>20}")
    (out / "before-after.json").write_text(json.dumps({"held_out": comparison, "dashboard": versions}, indent=2))
    return 0


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
