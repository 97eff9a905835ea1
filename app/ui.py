"""The page: the Ask tab for everyone; Annotate, Dashboard and Admin for the roles that may use them.

Tabs are shown by role when the page loads, and every handler's store call checks the role again.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
from gradio.components import Component

from app import admin_tab, annotate_tab, ask_tab, dashboard_tab
from app.annotate_tab import SHORTCUTS_JS
from app.context import Context
from app.guard import guard_events
from app.model_slot import ModelSlot
from visionthink.settings import Settings

TITLE = "VisionThink Studio"
INTRO = (
    "VisionThink first looks at your image at **half width and half height** (about 1/4 of the visual tokens) and "
    "answers directly when that is enough. When it is not (small text, charts), it calls a `resize_image` tool and "
    "gets the **full-resolution image** in a second turn. Below you see its reasoning, its decision and what it cost."
)
CSS = """
.vt-notice {border-left: 4px solid #b45309; padding: 8px 12px; background: #fffbeb; color: #78350f}
.vt-error {border-left: 4px solid #b91c1c; padding: 8px 12px; background: #fef2f2; color: #7f1d1d}
.vt-ok {border-left: 4px solid #15803d; padding: 8px 12px; background: #f0fdf4; color: #14532d}
"""
ROLE_TABS = {"annotator": {"annotate", "dashboard"}, "admin": {"annotate", "dashboard", "admin"}}


def build_demo(slot_or_ctx: ModelSlot | Context, examples=None) -> gr.Blocks:
    """The Blocks for a page. Given only a ``ModelSlot`` it is the public Ask page without a store.

    Every event handler runs under ``app.guard``; the files the page receives and makes live in ``ctx.files_dir``
    when one is given (only this page serves them) and are deleted ``VISIONTHINK_CACHE_MAX_AGE`` seconds after
    they were made.
    """
    ctx = slot_or_ctx if isinstance(slot_or_ctx, Context) else Context(slot_or_ctx, examples=examples or [])
    age = ctx.settings.cache_max_age_s
    with gr.Blocks(title=TITLE, delete_cache=(min(age, 600), age)) as demo:
        _build(demo, ctx)
    if ctx.files_dir is not None:
        keep_files_in(demo, ctx.files_dir)
    return guard_events(demo)


def keep_files_in(demo: gr.Blocks, folder: Path) -> None:
    """Every component of ``demo`` keeps the files it makes (images shown, archives, copies of uploads) in
    ``folder`` instead of Gradio's shared cache.

    Gradio reads the folder from each component's ``GRADIO_CACHE``, set from the environment when a component is
    built, and it builds fresh copies of a component from its class whenever a handler updates it for one session;
    so the folder is pinned on a subclass (same name, same module: the page is unchanged), not on the instance.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for block in demo.blocks.values():
        if isinstance(block, Component) and not hasattr(block, "is_template"):
            block.__class__ = _with_files_in(type(block), str(folder))


@functools.cache
def _with_files_in(cls: type, folder: str) -> type:
    pinned = property(lambda self: folder, lambda self, value: None)  # Block.__init__ assigns it: ignored
    return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                       "GRADIO_CACHE": pinned})


def _build(demo: gr.Blocks, ctx: Context) -> None:
    gr.Markdown(f"# {TITLE}\n{INTRO}")
    who = gr.Markdown("", elem_id="vt-who")
    if ctx.identity.mode == "oauth":
        gr.LoginButton()
    if not ctx.studio or ctx.store is None:
        ask_tab.build(ctx)
        return
    with gr.Tabs():
        with gr.Tab("Ask", id="ask"):
            ask_tab.build(ctx)
        tabs = {}
        loaders = []
        for name, module in (("annotate", annotate_tab), ("dashboard", dashboard_tab), ("admin", admin_tab)):
            tab, load, outputs = module.build(ctx)
            tabs[name] = tab
            loaders.append((load, outputs))

    def on_load(request: gr.Request, profile: gr.OAuthProfile | None):
        actor = ctx.actor(request, profile)
        allowed = ROLE_TABS.get(actor.role, set())
        greeting = (f"Signed in as **{actor.name}** ({actor.role})." if actor.signed_in
                    else "Not signed in: you can ask questions.")
        values = [greeting] + [gr.Tab(visible=name in allowed) for name in tabs]
        for (load, outputs), name in zip(loaders, tabs):
            if name in allowed:
                result = load(request, profile)
                values.extend(result if isinstance(result, tuple) else [result])
            else:
                values.extend([gr.skip()] * len(outputs))
        return values

    all_outputs = [who, *tabs.values()] + [o for _, outputs in loaders for o in outputs]
    demo.load(on_load, outputs=all_outputs, api_visibility="private")


def launch_kwargs(settings: Settings | None = None) -> dict:
    """Launch (or mount) options shared by every page. Exception text is never shown (``show_error=False``; the
    handlers' guard turns failures into messages with a reference); uploads are capped at
    ``VISIONTHINK_MAX_UPLOAD_MB``."""
    settings = settings or Settings()
    return {"css": CSS, "head": SHORTCUTS_JS, "run_history": False, "footer_links": ["api", "gradio", "settings"],
            "show_error": False, "max_file_size": settings.max_upload_bytes}
