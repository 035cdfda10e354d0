"""The one kind of error a user can fix.

Library code raises a subclass of `UserError` for a user's mistake or a bad input file (an unknown
name, a params value out of range, a missing, corrupt or foreign file, an unwritable output path);
its message names the culprit and, where there is one, the fix. The stage CLIs
(`pipelines._cli.friendly_errors`) print it as one line on stderr and exit with status 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the culprit (a key, a file, a name)."""


def short_reason(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters: the reason of a low-level failure
    (torch, numpy, zipfile) without the advice those libraries append (e.g. torch's `weights_only=False`,
    which is wrong advice for a corrupt file)."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
