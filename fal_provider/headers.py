"""What may go into an HTTP header: checked before a request is built, never echoing a value.

A header value with CR/LF would split the request (and h11 then fails with the value in its error
text, which is retried as a connection error and logged); a non-ASCII one cannot be encoded. Both
fail the same way on every try, so they are :class:`~fal_provider.exceptions.FalInputError`\\ s,
raised when the hook or call is built. Values may be secrets (the key, a proxy token): messages
name the header and the problem, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fal_provider.exceptions import FalInputError

#: RFC 9110 ``token``: the characters a header name may have.
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NAME_CHARS = "letters, digits and !#$%&'*+-.^_`|~"


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or ``None`` (tab and visible ASCII are fine)."""
    for char in value:
        if char in "\r\n":
            return "a line break (CR/LF)"
        if char != "\t" and (ord(char) < 0x20 or ord(char) == 0x7F):
            return "a control character"
        if not char.isascii():
            return "a non-ASCII character"
    return None


def check_header_value(name: str, value: Any, where: str) -> None:
    problem = value_problem(str(value))
    if problem:
        raise FalInputError(
            f"{where}: the value of header {name!r} contains {problem}; HTTP header values must be "
            "printable ASCII on one line. Fix the value (it is not shown here in case it is a secret)."
        )


def check_header_name(name: Any, where: str) -> None:
    text = str(name)
    if _NAME.fullmatch(text):
        return
    valid = _NAME.match(text)
    prefix = valid.group(0) if valid else ""
    which = f"a header name starting {prefix!r}" if prefix else "a header name"
    raise FalInputError(
        f"{where}: {which} is not a valid HTTP "
        f"header name (only {_NAME_CHARS}; no spaces, ':' or line breaks). Give names and values as "
        "separate keys and values of the mapping."
    )


def check_headers(headers: Mapping[Any, Any] | None, where: str) -> None:
    """Raise :class:`FalInputError` for the first header that cannot be sent as given."""
    for name, value in (headers or {}).items():
        check_header_name(name, where)
        check_header_value(str(name), value, where)


def check_key(key: str, conn_id: str) -> None:
    """The key goes into ``Authorization: Key <key>``: it must be a valid header value too."""
    problem = value_problem(key)
    if problem:
        raise FalInputError(
            f"The fal API key for connection {conn_id!r} contains {problem}. Enter it again as "
            "'key_id:key_secret' on one line (connection password, or FAL_KEY / FAL_KEY_ID + "
            "FAL_KEY_SECRET); the key itself is not shown here."
        )
