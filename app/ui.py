"""The page: the Ask tab for everyone; Annotate, Dashboard and Admin for the roles that may use them.

Tabs are shown by role when the page loads, and every handler's store call checks the role again.
"""

from __future__ import annotations

import gradio as gr

from app import admin_tab, annotate_tab, ask_tab, dashboard_tab
from app.annotate_tab import SHORTCUTS_JS
from app.context import Context
from app.model_slot import ModelSlot

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
    """The Blocks for a page. Given only a ``ModelSlot`` it is the public Ask page without a store."""
    ctx = slot_or_ctx if isinstance(slot_or_ctx, Context) else Context(slot_or_ctx, examples=examples or [])
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        who = gr.Markdown("", elem_id="vt-who")
        if ctx.identity.mode == "oauth":
            gr.LoginButton()
        if not ctx.studio or ctx.store is None:
            ask_tab.build(ctx)
            return demo
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
    return demo


def launch_kwargs() -> dict:
    """Launch (or mount) options shared by every page."""
    return {"css": CSS, "head": SHORTCUTS_JS, "run_history": False, "footer_links": ["api", "gradio", "settings"]}
