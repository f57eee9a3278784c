"""One-line error messages: what every refusal in lrlab is reduced to before it reaches a user."""

from __future__ import annotations


def one_line(e: BaseException, limit: int = 200) -> str:
    """`TypeName: the first line of its message` (at most `limit` characters of it)."""
    text = str(e).splitlines()[0][:limit] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
