"""The first reply engine: a fixed, configurable greeting, and the rules for when not to reply."""

from __future__ import annotations

from storage.repo import ConversationState

# Message types that never get an automatic answer.
NO_REPLY_TYPES = frozenset({"reaction", "system", "unsupported", "unknown", "request_welcome", "ephemeral"})


def plan_reply(message_type: str, state: ConversationState, greeting: str) -> str | None:
    """The text to send back, or ``None`` when the bot must stay quiet."""
    if message_type in NO_REPLY_TYPES:
        return None
    if state.opted_out or state.bot_paused or state.needs_human or state.assigned_user_id is not None:
        return None
    return greeting
