"""Who the page thinks is asking, in each sign-in mode; roles always come from the configured users."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.identity import Identity
from store.users import Directory, UserEntry, hash_password

DIRECTORY = Directory([UserEntry("ann", "annotator", hash_password("pw")), UserEntry("root", "admin", None)])


def request(username=None, session="s-1"):
    return SimpleNamespace(username=username, session_hash=session)


def profile(name: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"preferred_username": name, "name": name.title(), "picture": "", "profile": ""})


def test_public_page_treats_everyone_as_anonymous():
    identity = Identity(DIRECTORY, "none")
    actor = identity.actor(request("ann"), profile("root"))  # neither a login name nor a profile counts here
    assert (actor.name, actor.role, actor.rater) == (None, "viewer", "anon:s-1")


def test_password_mode_takes_the_login_name_and_its_role():
    identity = Identity(DIRECTORY, "password")
    assert identity.actor(request("ann")).role == "annotator"
    assert identity.actor(request("mallory")).signed_in is False  # not configured: anonymous
    assert identity.actor(request(None), profile("root")).signed_in is False  # an OAuth profile is ignored
    assert identity.check_password("ann", "pw") and not identity.check_password("ann", "nope")
    assert not identity.check_password("root", "")  # no password configured: no password login


def test_spaces_mode_takes_roles_by_hugging_face_account():
    identity = Identity(DIRECTORY, "oauth")
    assert identity.actor(request(), profile("root")).role == "admin"
    stranger = identity.actor(request(), profile("someone"))
    assert (stranger.name, stranger.role) == ("someone", "viewer")
    assert identity.actor(request("root"), None).signed_in is False  # a login name alone means nothing here
