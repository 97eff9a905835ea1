"""Who is using the page: an anonymous visitor, a user signed in with a password (Gradio's login), or a Hugging Face
account on Spaces. Roles come from the configured users; the store checks them on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gradio as gr

from store.api import Actor
from store.users import Directory

AuthMode = Literal["none", "password", "oauth"]


@dataclass(frozen=True)
class Identity:
    directory: Directory
    mode: AuthMode = "none"
    #: Role of Hugging Face accounts that sign in but are not in the configured users.
    default_oauth_role: str = "viewer"

    def actor(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> Actor:
        session = getattr(request, "session_hash", None)
        if self.mode == "password":
            name = getattr(request, "username", None)
            role = self.directory.role(name)
            return Actor(name, role) if name and role else Actor.anonymous(session)
        if self.mode == "oauth" and profile is not None:
            name = profile.get("preferred_username") or getattr(profile, "username", None)
            if name:
                return Actor(name, self.directory.role(name) or self.default_oauth_role)
        return Actor.anonymous(session)

    def check_password(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callable."""
        return self.directory.check_password(username, password)
