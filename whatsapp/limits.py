"""WhatsApp's own limits, each written once: every check of a text, a caption, a token or the
24-hour window reads it from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: The longest text message body WhatsApp carries (Cloud API: 4,096 characters), either way.
TEXT_MAX_CHARS = 4096
#: The longest caption of a media message.
CAPTION_MAX_CHARS = 1024
#: The longest access token a business number is given (a token is one line without spaces).
ACCESS_TOKEN_MAX_CHARS = 4096
#: The customer-service window: free-form messages may go until this long after the customer last
#: wrote; after it only a template may (Meta's code 131047, re-engagement).
SERVICE_WINDOW = timedelta(hours=24)


def window_open_until(last_inbound_at: datetime | None) -> datetime | None:
    """Until when a free-form message may go to a customer who last wrote at ``last_inbound_at``
    (None: never wrote, only a template may go)."""
    return last_inbound_at + SERVICE_WINDOW if last_inbound_at is not None else None


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether a free-form message may go now: the customer wrote at most :data:`SERVICE_WINDOW` ago."""
    until = window_open_until(last_inbound_at)
    return until is not None and now <= until


def is_access_token(token: str) -> bool:
    """Whether ``token`` can be a business number's access token: 1 to
    :data:`ACCESS_TOKEN_MAX_CHARS` characters, none of them white space."""
    return 0 < len(token) <= ACCESS_TOKEN_MAX_CHARS and not any(c.isspace() for c in token)
