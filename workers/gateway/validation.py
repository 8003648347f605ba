"""A refused body, said so that its sender knows what to change.

FastAPI's validation errors read `0: JSON decode error` (for a body that is not JSON), `Input
should be a valid dictionary or object to extract fields from` (for a body sent without
`Content-Type: application/json`), `documents.3: String should have at least 1 character`.
Here: the body is not valid JSON, and where; send `Content-Type: application/json` with a
JSON object; `documents[3]` is empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MAX_PROBLEMS = 5
# pydantic's names for the member of a union a value was checked against: not a place in
# the body (`documents.0.str`, `documents.0.dict[str,any]`).
_UNION_MEMBERS = ("str", "int", "float", "bool", "list", "dict", "none", "function-after")
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def validation_message(
    details: Iterable[Mapping[str, Any]], content_type: str | None, body: Any = None
) -> str:
    """One message for a body's validation errors: at most MAX_PROBLEMS problems, each
    with where it is (`documents[3]`, `top_n`), the ones about the same place joined."""
    problems: dict[str, list[str]] = {}
    for detail in details:
        loc = tuple(detail.get("loc", ()))
        kind = str(detail.get("type", ""))
        if kind == "json_invalid":
            return _not_json(detail, body)
        if loc in (("body",), ()) and kind in ("model_attributes_type", "dict_type", "model_type"):
            return _not_an_object(content_type, detail.get("input"))
        if loc in (("body",), ()) and kind == "missing":
            return (
                "the body is empty: send a JSON object (with `Content-Type: application/json`) "
                "as the API documents"
            )
        where = place(loc)
        message = _message(detail, where)
        found = problems.setdefault(where, [])
        if message not in found:
            found.append(message)
    parts = [_joined(where, messages) for where, messages in list(problems.items())[:MAX_PROBLEMS]]
    return "; ".join(parts) or "invalid request"


def _joined(where: str, messages: list[str]) -> str:
    """`documents[1]: Input should be a valid string or a valid dictionary`, `query is
    required`."""
    first, *rest = messages
    lead = "Input should be "
    text = " or ".join(
        [first, *(m.removeprefix(lead) if first.startswith(lead) else m for m in rest)]
    )
    if not where:
        return text
    return f"{where} {text}" if text.startswith("is ") else f"{where}: {text}"


def place(loc: Sequence[Any]) -> str:
    """A location as its sender writes it: `documents[3].text`, `top_n` (without `body`
    and pydantic's union member names)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_member(str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_union_member(part: str) -> bool:
    lowered = part.lower()
    return lowered.startswith(_UNION_MEMBERS) or "[" in part or part[:1].isupper()


def _message(detail: Mapping[str, Any], where: str) -> str:
    kind = str(detail.get("type", ""))
    message = str(detail.get("msg", "invalid"))
    if kind == "string_too_short" and detail.get("input") == "":
        return "is empty: send text (leave out what has none)"
    if kind == "missing":
        return "is required"
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # A message that names its own field (`filter: ...`) need not be led by it again.
    return message.removeprefix(f"{where}: ") if where else message


def _not_json(detail: Mapping[str, Any], body: Any) -> str:
    """`the body is not valid JSON: Expecting value at line 1 column 12 (char 11)`."""
    error = str((detail.get("ctx") or {}).get("error", "")).strip()
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if isinstance(text, str):
        try:
            json.loads(text)
        except json.JSONDecodeError as decode:
            error = (
                f"{decode.msg} at line {decode.lineno} column {decode.colno} (char {decode.pos})"
            )
        except ValueError:
            pass
    loc = tuple(detail.get("loc", ()))
    if not error and len(loc) > 1 and isinstance(loc[1], int):
        error = f"at char {loc[1]}"
    return (
        f"the body is not valid JSON{': ' + error if error else ''}: send a JSON object with "
        "`Content-Type: application/json`"
    )


def _not_an_object(content_type: str | None, given: Any) -> str:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        sent = f"`Content-Type: {content_type}`" if content_type else "no Content-Type"
        return (
            f"the body was sent with {sent}: send `Content-Type: application/json` with a JSON "
            "object as the API documents"
        )
    kind = JSON_TYPES.get(type(given), "a number" if isinstance(given, int | float) else "null")
    return f"the body is {kind}: send a JSON object ({{...}}) with the fields the API documents"
