"""Answers from elsewhere: ``--answers https://...`` and ``hostsetup.answers=`` on the
kernel command line (as kickstart's ``inst.ks=`` and preseed's ``preseed/url=``).

The URL must be ``https://`` without credentials in it; the server's
certificate is always verified (against ``--answers-ca FILE``, or the
system's CAs), the answers are at most :data:`ANSWERS_LIMIT` bytes and the
whole download takes at most :data:`FETCH_TIMEOUT` seconds; redirects are
not followed.  The bytes are written to a private file (a new directory of
mode 0700, the file 0600, removed at exit) and loaded by the ordinary answers
loader, so every rule of the answers file holds (secrets are references).

Failures are :class:`FetchError` with the exit code: 2 for a URL or CA file
that cannot be used, 5 when the server cannot be reached or verified, 3 when
it answers something that is not an answers file (HTTP error, too large).
"""

from __future__ import annotations

import atexit
import http.client
import os
import shlex
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from wizard import __version__
from wizard.exits import EXIT_INVALID, EXIT_UNREACHABLE, EXIT_USAGE

ANSWERS_LIMIT = 1024 * 1024  # bytes
FETCH_TIMEOUT = 30.0  # seconds, for the whole download
# The kernel command line; HOSTSETUP_PROC_CMDLINE names another file (tests).
PROC_CMDLINE = Path("/proc/cmdline")
CMDLINE_KEY, CMDLINE_CA_KEY = "hostsetup.answers", "hostsetup.answers_ca"


class FetchError(Exception):
    """The answers could not be fetched; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def is_url(text: str) -> bool:
    """Whether an ``--answers`` value is a URL rather than a file name."""
    return "://" in text


def fetch(url: str, ca: Path | None = None, limit: int = ANSWERS_LIMIT,
          timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET ``url`` over verified TLS; the body, at most ``limit`` bytes, within ``timeout``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FetchError(f"{url}: only https:// URLs are fetched (TLS, verified)", EXIT_USAGE)
    if parts.username or parts.password:
        raise FetchError("answers URL: no credentials in the URL, please (they would be "
                         "logged); use a URL that needs none", EXIT_USAGE)
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"--answers-ca {ca}: not a usable CA file "
                         f"({getattr(exc, 'strerror', None) or exc})", EXIT_USAGE) from None
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                       context=context)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     headers={"User-Agent": f"hostsetup/{__version__}",
                              "Accept": "application/yaml, text/yaml, text/plain, */*"})
        resp = conn.getresponse()
        if resp.status != 200:
            where = resp.getheader("Location")
            raise FetchError(f"{url}: HTTP {resp.status} {resp.reason}"
                             + (f" (redirect to {where} not followed)" if where else ""),
                             EXIT_INVALID)
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{url}: {declared} bytes, more than the {limit} an answers file "
                             "may have", EXIT_INVALID)
        body = bytearray()
        while len(body) <= limit:
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: not received within {timeout:g} s", EXIT_UNREACHABLE)
            chunk = resp.read1(65536)
            if not chunk:
                return bytes(body)
            body += chunk
        raise FetchError(f"{url}: more than the {limit} bytes an answers file may have",
                         EXIT_INVALID)
    except ssl.SSLCertVerificationError as exc:
        raise FetchError(f"{url}: server certificate not verified ({exc.verify_message}); "
                         "give its CA with --answers-ca FILE", EXIT_UNREACHABLE) from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{url}: unreachable ({getattr(exc, 'strerror', None) or exc})",
                         EXIT_UNREACHABLE) from None
    finally:
        conn.close()


def private_copy(data: bytes) -> Path:
    """``data`` in a new private file (directory 0700, file 0600), removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="hostsetup-answers-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "answers.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def cmdline_answers(path: Path | None = None) -> tuple[str | None, Path | None]:
    """``hostsetup.answers=`` (a path or URL) and ``hostsetup.answers_ca=`` from the
    kernel command line (``/proc/cmdline``, or ``$HOSTSETUP_PROC_CMDLINE``)."""
    path = path or Path(os.environ.get("HOSTSETUP_PROC_CMDLINE") or PROC_CMDLINE)
    try:
        with path.open("rb") as f:
            text = f.read(65536).decode(errors="replace")
        words = shlex.split(text)
    except (OSError, ValueError):
        return None, None
    found = dict(w.split("=", 1) for w in words if "=" in w)
    ca = found.get(CMDLINE_CA_KEY)
    return found.get(CMDLINE_KEY) or None, Path(ca) if ca else None
