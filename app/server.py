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
from gradio.utils import get_upload_folder

from app.context import Context
from app.examples import ensure_examples
from app.housekeeping import Housekeeping
from app.identity import Identity
from app.model_slot import ModelSlot
from app.throttle import LoginThrottle, LoginThrottleMiddleware
from app.ui import build_demo, launch_kwargs
from store.api import Store
from store.users import Directory, parse_users
from visionthink.loader import load_engine
from visionthink.settings import Settings

log = logging.getLogger(__name__)
STUDIO_PATH = "/studio"
AUTH_MESSAGE = ("<h2>VisionThink Studio</h2><p>Sign in to annotate answers, see the dashboard or export training "
                "data. Visitors can ask questions without signing in on the <a href='/'>public page</a>.</p>")


@dataclass
class Pages:
    """The built pages: ``public`` always; ``studio`` when people can sign in with a password."""

    public: gr.Blocks
    studio: gr.Blocks | None
    identity: Identity
    store: Store | None
    slot: ModelSlot
    settings: Settings

    @property
    def on_spaces(self) -> bool:
        return self.identity.mode == "oauth"

    @property
    def file_folders(self) -> list[Path]:
        """Where the pages keep files: Gradio's folder (``GRADIO_TEMP_DIR``) and the studio's own."""
        return [Path(get_upload_folder()), studio_files_dir()]

    def kept_files(self) -> set[str]:
        """Files the pages need for as long as they run (the examples)."""
        pages = [p for p in (self.public, self.studio) if p is not None]
        return {os.path.abspath(f) for page in pages for block in page.blocks.values()
                for f in getattr(block, "keep_in_cache", ())}


def build_pages(settings: Settings, *, slot: ModelSlot | None = None, examples=None,
                on_spaces: bool | None = None) -> Pages:
    directory = Directory(parse_users(settings.users, settings.users_file))
    store = None
    if settings.store_enabled:
        store = Store(settings.db_url, ratings_per_item=settings.ratings_per_item,
                      anonymous_thumbs=settings.anonymous_rating, max_question_chars=settings.max_question_chars,
                      max_text_chars=settings.max_text_chars)
        store.sync_users(directory.pairs())
    slot = slot or ModelSlot(lambda progress: load_engine(settings, progress)).start()
    examples = ensure_examples(settings.examples_dir) if examples is None else examples
    on_spaces = bool(settings.space_id) if on_spaces is None else on_spaces

    with_studio = store is not None and directory.can_sign_in

    def page(mode: str, studio: bool, files_dir: Path | None = None) -> tuple[gr.Blocks, Identity]:
        identity = Identity(directory, mode)
        ctx = Context(slot, store, identity, examples, settings=settings, studio=studio, files_dir=files_dir,
                      studio_path=STUDIO_PATH if with_studio and mode != "oauth" else None)
        return build_demo(ctx), identity

    if on_spaces:
        public, identity = page("oauth", studio=True)
        return Pages(public, None, identity, store, slot, settings)
    public, identity = page("none", studio=False)
    studio = None
    if with_studio:
        studio, identity = page("password", studio=True, files_dir=studio_files_dir())
    elif store is not None:
        log.info("No users with passwords are configured (VISIONTHINK_USERS): the annotation studio is off.")
    return Pages(public, studio, identity, store, slot, settings)


#: Seconds that running requests get to finish once the app is asked to stop (SIGTERM, Ctrl-C).
SHUTDOWN_GRACE_S = 5


def studio_files_dir() -> Path:
    """The studio's own file folder, beside (not inside) Gradio's shared one, which the public page serves from;
    only the studio's file route, behind its login, serves it."""
    return Path(get_upload_folder() + "-studio")


def create_app(pages: Pages):
    """A FastAPI app with the public page at / and the studio at /studio (behind Gradio's login).

    The studio keeps its files (uploads, images it shows, export archives) in its own folder, which only its own
    file route, behind the login, serves; the public page also blocks that folder outright. Sign-ins are
    throttled per user name and per client (``app.throttle``).
    """
    from fastapi import FastAPI

    settings = pages.settings
    app = FastAPI(title="VisionThink Studio")
    kwargs = launch_kwargs(settings)
    blocked: list[str] = []
    if pages.studio is not None:
        from fastapi.responses import RedirectResponse

        @app.get(STUDIO_PATH, include_in_schema=False)
        def studio_without_slash():
            # Where Gradio's sign-out sends people (and what people type): the studio itself lives at /studio/.
            return RedirectResponse(f"{STUDIO_PATH}/")

        files = str(studio_files_dir())
        pages.studio.queue(max_size=settings.queue_size)
        app = gr.mount_gradio_app(app, pages.studio, path=STUDIO_PATH, auth=pages.identity.check_password,
                                  auth_message=AUTH_MESSAGE,
                                  allowed_paths=[files], **kwargs)
        blocked.append(files)
        app.add_middleware(
            LoginThrottleMiddleware, paths={f"{STUDIO_PATH}/login"},
            throttle=LoginThrottle(max_per_user=settings.login_max_failures,
                                   max_per_client=settings.login_max_failures_per_client,
                                   window_s=settings.login_window_s))
    pages.public.queue(max_size=settings.queue_size)
    return gr.mount_gradio_app(app, pages.public, path="/", blocked_paths=blocked, **kwargs)


def serve(settings: Settings) -> None:
    pages = build_pages(settings)
    housekeeping = Housekeeping(pages.store, settings, folders=pages.file_folders, keep=pages.kept_files).start()
    host = settings.server_name or ("0.0.0.0" if pages.on_spaces else "127.0.0.1")
    port = settings.server_port
    try:
        if pages.on_spaces or pages.studio is None:
            pages.public.queue(max_size=settings.queue_size)
            pages.public.launch(server_name=host, server_port=port, **launch_kwargs(settings))
            return
        import uvicorn

        log.info("Public page: http://%s:%d/ · studio (sign in): http://%s:%d%s/", host, port, host, port,
                 STUDIO_PATH)
        print(f"* Running on local URL:  http://{host}:{port}  (studio: http://{host}:{port}{STUDIO_PATH}/)",
              flush=True)
        # Open connections (a page's event stream) would otherwise hold a SIGTERM off for as long as they last.
        uvicorn.run(create_app(pages), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    finally:
        housekeeping.stop()
