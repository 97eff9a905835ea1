"""Puts the pages together.

- Locally: the public page at ``/`` (anyone may ask) and, when users with passwords are configured, the studio at
  ``/studio`` behind Gradio's login (Ask, Annotate, Dashboard, Admin by role), served by uvicorn.
- On Hugging Face Spaces (``SPACE_ID`` set): one page with "Sign in with Hugging Face"; roles come from
  ``VISIONTHINK_USERS`` by account name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.context import Context
from app.examples import ensure_examples
from app.identity import Identity
from app.model_slot import ModelSlot
from app.ui import build_demo, launch_kwargs
from store.api import Store
from store.users import Directory, parse_users
from visionthink.loader import load_engine
from visionthink.settings import Settings

log = logging.getLogger(__name__)
STUDIO_PATH = "/studio"


@dataclass
class Pages:
    """The built pages: ``public`` always; ``studio`` when people can sign in with a password."""

    public: gr.Blocks
    studio: gr.Blocks | None
    identity: Identity
    store: Store | None
    slot: ModelSlot

    @property
    def on_spaces(self) -> bool:
        return self.identity.mode == "oauth"


def build_pages(settings: Settings, *, slot: ModelSlot | None = None, examples=None,
                on_spaces: bool | None = None) -> Pages:
    directory = Directory(parse_users(settings.users, settings.users_file))
    store = None
    if settings.store_enabled:
        store = Store(settings.db_url, ratings_per_item=settings.ratings_per_item,
                      anonymous_thumbs=settings.anonymous_rating)
        store.sync_users(directory.pairs())
    slot = slot or ModelSlot(lambda progress: load_engine(settings, progress)).start()
    examples = ensure_examples() if examples is None else examples
    export_root = Path(os.environ.get("VISIONTHINK_EXPORT_DIR", "data/exports"))
    on_spaces = bool(os.environ.get("SPACE_ID")) if on_spaces is None else on_spaces

    def page(mode: str, studio: bool) -> tuple[gr.Blocks, Identity]:
        identity = Identity(directory, mode)
        ctx = Context(slot, store, identity, examples, export_root=export_root, studio=studio)
        return build_demo(ctx), identity

    if on_spaces:
        public, identity = page("oauth", studio=True)
        return Pages(public, None, identity, store, slot)
    public, identity = page("none", studio=False)
    studio = None
    if store is not None and directory.can_sign_in:
        studio, identity = page("password", studio=True)
    elif store is not None:
        log.info("No users with passwords are configured (VISIONTHINK_USERS): the annotation studio is off.")
    return Pages(public, studio, identity, store, slot)


def create_app(pages: Pages):
    """A FastAPI app with the public page at / and the studio at /studio (behind Gradio's login)."""
    from fastapi import FastAPI

    app = FastAPI(title="VisionThink Studio")
    kwargs = launch_kwargs()
    queue_size = int(os.environ.get("VISIONTHINK_QUEUE_SIZE", "32"))
    if pages.studio is not None:
        pages.studio.queue(max_size=queue_size)
        app = gr.mount_gradio_app(app, pages.studio, path=STUDIO_PATH, auth=pages.identity.check_password,
                                  auth_message="Sign in to annotate, see the dashboard or export.", **kwargs)
    pages.public.queue(max_size=queue_size)
    return gr.mount_gradio_app(app, pages.public, path="/", **kwargs)


def serve(settings: Settings) -> None:
    pages = build_pages(settings)
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if pages.on_spaces else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    if pages.on_spaces or pages.studio is None:
        pages.public.queue(max_size=int(os.environ.get("VISIONTHINK_QUEUE_SIZE", "32")))
        pages.public.launch(server_name=host, server_port=port, **launch_kwargs())
        return
    import uvicorn

    log.info("Public page: http://%s:%d/ · studio (sign in): http://%s:%d%s/", host, port, host, port, STUDIO_PATH)
    print(f"* Running on local URL:  http://{host}:{port}  (studio: http://{host}:{port}{STUDIO_PATH}/)", flush=True)
    uvicorn.run(create_app(pages), host=host, port=port, log_level="warning")
