"""The fleet's broker transport: kombu's Redis transport that survives garbage entries.

kombu decodes each queue entry (a JSON envelope: ``body``, ``headers``,
``properties``) in the channel's ``_brpop_read`` / ``_get``, outside Celery's
per-message handling, so one entry that is not JSON (``LPUSH q '{not json'``),
not UTF-8, or JSON that is not an envelope used to stop the agent with
"Unrecoverable error".  Here such an entry is logged (a short, truncated
preview), dropped (BRPOP already removed it from the queue) and the agent goes
on consuming.  The app selects it with ``broker_transport``
(:func:`wizard.fleet.make_app`); it is imported only by Celery, lazily.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from kombu.transport import redis
from kombu.transport.virtual import Empty

log = logging.getLogger("hostsetup")

PREVIEW = 200  # bytes of a dropped entry shown in the log


def preview(raw: bytes | str | None) -> str:
    """The first :data:`PREVIEW` bytes of ``raw`` as a repr, with its full size."""
    if raw is None:
        return "(content not available)"
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    more = f"... ({len(data)} bytes)" if len(data) > PREVIEW else ""
    return repr(data[:PREVIEW]) + more


def is_envelope(message: Any) -> bool:
    """True if kombu can build a Message from ``message`` (shape and body encoding)."""
    if not isinstance(message, dict):
        return False
    props, body = message.get("properties"), message.get("body")
    if not (isinstance(props, dict) and "delivery_tag" in props
            and isinstance(props.get("delivery_info", {}), dict)
            and isinstance(message.get("headers") or {}, dict)
            and isinstance(body, (str, bytes, type(None)))):
        return False
    encoding = props.get("body_encoding")
    if not body or encoding in (None, "utf-8"):
        return True
    if encoding != "base64":
        return False
    try:
        base64.b64decode(body)  # as kombu will
    except ValueError:
        return False
    return True


# What decoding one entry can raise: not JSON (ValueError), a kombu JSON type
# marker with a bad value (ValueError), an envelope field of the wrong type.
DECODE_ERRORS = (ValueError, KeyError, TypeError)


def _dropped(where: str, exc: BaseException) -> None:
    raw = getattr(exc, "doc", None) or getattr(exc, "object", None)  # JSON / UTF-8 errors
    reason = f"{type(exc).__name__}: {str(exc)[:PREVIEW]}"
    log.error("dropped an undecodable entry of %s (%s): %s", where, reason, preview(raw))


def envelope_or_dropped(message: Any, queue: str) -> bool:
    """True if ``message`` is an envelope; otherwise it is logged as dropped."""
    if is_envelope(message):
        return True
    log.error("dropped an entry of %s that is not a message envelope: %s", queue,
              preview(json.dumps(message, default=str)))
    return False


class Channel(redis.Channel):
    """A Redis channel whose one bad entry is dropped instead of stopping the worker.

    ``_brpop_read`` is the worker's event-loop read (entries that are not
    envelopes are caught in :meth:`Transport._deliver`); ``_get`` is the
    polling read (``basic_get``), which builds its Message itself.
    """

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except DECODE_ERRORS as exc:
            _dropped(", ".join(self.active_queues) or "a queue", exc)
            raise Empty() from None

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        try:
            message = super()._get(queue)
        except DECODE_ERRORS as exc:
            _dropped(queue, exc)
            raise Empty() from None
        if not envelope_or_dropped(message, queue):
            raise Empty()
        return message


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`; entries that are not envelopes are
    dropped before a Message is built from them."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        if envelope_or_dropped(message, queue):
            super()._deliver(message, queue)
