"""How repos and sessions are named in short text: messages, menus, the headless line.

Base layer: imports nothing of the project.
"""

from __future__ import annotations

from pathlib import PurePath

# An id this short is shown whole; a longer one by its first SESSION_PREFIX characters.
SESSION_WHOLE = 12
SESSION_PREFIX = 8


def repo_name(repo: str) -> str:
    """A repo's folder name (`/home/me/src/acme-api` -> `acme-api`)."""
    return PurePath(repo).name or repo


def short_session(session: str) -> str:
    """The first 8 characters of an id: enough to tell sessions apart in a message."""
    return session if len(session) <= SESSION_WHOLE else session[:SESSION_PREFIX]
