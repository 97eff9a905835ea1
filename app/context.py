"""What every tab of the page shares: the model, the store, who is asking, and the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from app.examples import Example
from app.identity import Identity
from app.model_slot import ModelSlot
from store.api import Actor, Store
from store.users import Directory
from visionthink.settings import Settings


@dataclass
class Context:
    slot: ModelSlot
    store: Store | None = None
    identity: Identity = field(default_factory=lambda: Identity(Directory([])))
    examples: list[Example] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    #: The studio (signed-in) page shows every tab the user's role allows; the public page only asks.
    studio: bool = False
    #: Where this page keeps the files it makes and receives (Gradio's cache for its components); only this page
    #: serves them. None: Gradio's shared folder.
    files_dir: Path | None = None
    #: Where the studio is served (e.g. "/studio"), when there is one: the public page links to it and the studio
    #: offers to sign out under it.
    studio_path: str | None = None

    def actor(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> Actor:
        return self.identity.actor(request, profile)

    def may_rate(self, actor: Actor) -> bool:
        return self.store is not None and (actor.signed_in or self.store.anonymous_thumbs)
