"""What deploykit prints of text from elsewhere: no password inside a URL, no control character."""

from __future__ import annotations

import re

# user:password up to the last @ of the URL: a password may hold @ or / itself.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*:\S*@")


def redact(text: str) -> str:
    """``text`` with any password inside a URL (scheme://user:password@host) replaced by ***."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


# A value quoted back in an error (a 100,000-character profile name) is clipped, so the sentence stays readable.
_LONG_WORD = re.compile(r"[^\s'\"`]{241,}")


def _clip(match: re.Match[str]) -> str:
    word = match.group()
    return f"{word[:80]}…({len(word)} characters)"


def for_terminal(text: str) -> str:
    """A message as the terminal gets it: no URL password, no control character (an escape sequence in a
    name from a file could rewrite the screen), no raw byte (a non-UTF-8 name arrives as a surrogate)."""
    text = redact(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = _LONG_WORD.sub(_clip, text)
    return "".join(c if c in "\n\t" or not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) else ascii(c)[1:-1] for c in text)
