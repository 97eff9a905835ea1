"""The page: the Ask tab for everyone; Annotate, Dashboard and Admin for the roles that may use them.

Tabs are shown by role when the page loads, and every handler's store call checks the role again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.components import Component

from app import admin_tab, annotate_tab, ask_tab, dashboard_tab
from app.annotate_tab import SHORTCUTS_JS
from app.context import Context
from app.guard import guard_events
from app.model_slot import ModelSlot
from app.render import text
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
.dark .vt-notice {background: #3b2106; color: #fde68a}
.dark .vt-error {background: #3f1010; color: #fecaca}
.dark .vt-ok {background: #0c2e1a; color: #bbf7d0}
.vt-notice details {margin-top: 6px}
.vt-notice summary {cursor: pointer}
.vt-bar-track {background: var(--border-color-primary); border-radius: 4px; height: 14px}
.vt-bar {height: 14px; border-radius: 4px}
.vt-compare-answer, .vt-compare-cost {margin-top: 6px}
/* Annotate tab: the item, its image and the verdict buttons fit one 1280x900 screen */
#vt-annotate-tab > .column {gap: 8px}
#vt-annotate-bar {align-items: center; gap: 8px}
#vt-annotate-item {gap: 12px}
#vt-annotate-item > .column {gap: 8px}
#vt-progress p {margin: 0}
#vt-annotate-message {min-height: 30px}
#vt-annotate-message .html-container {padding: 0}
#vt-annotate-message .vt-ok, #vt-annotate-message .vt-error {padding: 5px 10px}
.vt-item-head {display: flex; flex-wrap: wrap; align-items: center; gap: 4px 10px}
.vt-item-head code {font-size: 0.9em}
.vt-item-head .vt-badge {padding: 2px 10px !important; font-size: 0.85em}
#vt-annotate-image img {cursor: zoom-in}
#vt-image-caption {align-self: center; text-align: right; color: var(--body-text-color-subdued)}
#vt-verdicts button {white-space: nowrap; padding-left: 6px; padding-right: 6px}
#vt-annotate-bar button {white-space: nowrap}
/* end Annotate tab */
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
    who = gr.HTML("", elem_id="vt-who")
    if ctx.identity.mode == "oauth":
        gr.LoginButton()
    tabs: dict[str, gr.Tab] = {}
    loaders: list[tuple[Callable, list]] = []
    if not ctx.studio or ctx.store is None:
        ask_load, ask_outputs = ask_tab.build(ctx)
    else:
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                ask_load, ask_outputs = ask_tab.build(ctx)
            for name, module in (("annotate", annotate_tab), ("dashboard", dashboard_tab), ("admin", admin_tab)):
                tab, load, outputs = module.build(ctx)
                tabs[name] = tab
                loaders.append((load, outputs))

    def on_load(request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        """Fill the page for whoever opened it: who they are, the model's state now, and the tabs their role
        allows (each filled by its own loader)."""
        actor = ctx.actor(request, profile)
        allowed = ROLE_TABS.get(actor.role, set())
        values = {who: greeting(ctx, actor), **ask_load(request, profile)}
        values.update({tab: gr.Tab(visible=name in allowed) for name, tab in tabs.items()})
        for (load, outputs), name in zip(loaders, tabs):
            if name in allowed:
                result = load(request, profile)
                if isinstance(result, dict):
                    values.update(result)
                else:
                    values.update(zip(outputs, result if isinstance(result, tuple) else [result]))
        return values

    all_outputs = [who, *ask_outputs, *tabs.values()] + [o for _, outputs in loaders for o in outputs]
    demo.load(on_load, outputs=all_outputs, api_visibility="private")


def greeting(ctx: Context, actor) -> str:
    """Who is here, and the way in or out of the studio (links open in the same tab): the public page links to the
    studio when there is one; the studio names who signed in and offers to sign out."""
    if actor.signed_in:
        line = f"Signed in as <b>{text(actor.name)}</b> ({actor.role})."
        if ctx.identity.mode == "password" and ctx.studio_path:
            line += f' · <a href="{ctx.studio_path}/logout" target="_self" id="vt-sign-out">Sign out</a>'
        return line
    line = "Not signed in: you can ask questions."
    if not ctx.studio and ctx.studio_path:
        line += (f' Annotators and admins: <a href="{ctx.studio_path}/" target="_self" id="vt-studio-link">sign in to '
                 "the studio</a>.")
    return line


def launch_kwargs(settings: Settings | None = None) -> dict:
    """Launch (or mount) options shared by every page. Exception text is never shown (``show_error=False``; the
    handlers' guard turns failures into messages with a reference); uploads are capped at
    ``VISIONTHINK_MAX_UPLOAD_MB``."""
    settings = settings or Settings()
    return {"css": CSS, "head": SHORTCUTS_JS, "run_history": False, "footer_links": ["api", "gradio", "settings"],
            "show_error": False, "max_file_size": settings.max_upload_bytes}
