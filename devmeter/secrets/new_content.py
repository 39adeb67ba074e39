"""The user's new content in a request, for the secrets inspector: the registry's views
(`WireFormat.new_turn`, `WireFormat.sent_text`, in each provider's module), so that
adding a provider teaches the inspector its conversation with no line changed here."""

from __future__ import annotations

from devmeter.providers.registry import new_turn as new_pieces
from devmeter.providers.registry import sent_text as all_pieces
from devmeter.providers.turn_text import Piece, cursor_doc

__all__ = ["Piece", "all_pieces", "cursor_doc", "new_pieces"]
