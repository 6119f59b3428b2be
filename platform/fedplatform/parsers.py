"""Request body parsing that bad input cannot turn into a server error or a memory spike.

DRF's own ``JSONParser`` reads the whole body whatever its size (Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` only guards ``request.body`` and form parsing) and lets a
deeply nested document (``[[[[...``) escape as ``RecursionError``, a 500. Here a JSON body
is read up to the cap and no further (413 beyond it), and refused with 400 before any
serializer or service sees it when it is nested deeper than :data:`MAX_JSON_DEPTH`, holds
a number outside the float range (``1e999``) or ``NaN``/``Infinity``, or holds a string
with a NUL character or a lone surrogate (``"\\ud800"``), which no serializer field checks
inside free-form objects and which PostgreSQL refuses to store in a ``jsonb`` column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import JSONParser

from fedplatform.errors import TooLarge

#: Deep enough for every document the APIs take (model specs, data schemas, metrics).
MAX_JSON_DEPTH = 32
#: The body cap when Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is switched off (``None``).
FALLBACK_MAX_JSON_BYTES = 2_621_440


def json_body_limit() -> int:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return FALLBACK_MAX_JSON_BYTES if limit is None else int(limit)


def loads_checked(raw: str | bytes, *, what: str = "JSON") -> object:
    """``json.loads`` for untrusted text, raising ``ParseError`` with a clear message."""
    try:
        value = json.loads(
            raw, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except RecursionError:
        raise ParseError(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, integers of thousands of digits
        raise ParseError(f"{what} is not valid JSON: {error}") from None
    problem = document_problem(value)
    if problem:
        raise ParseError(f"{what} {problem}")
    return value


def document_problem(value: object) -> str:
    """What is wrong with a parsed JSON document (``""`` if nothing), walked without recursion."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return f"is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        if isinstance(item, str):
            if not _storable(item):
                return "holds a NUL character or an unpaired surrogate"
        elif isinstance(item, dict):
            if not all(_storable(key) for key in item):
                return "holds a NUL character or an unpaired surrogate in a key"
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return ""


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
        return False
    return True


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object whose keys are all distinct: with a repeated key, which one counts is ambiguous."""
    document = dict(pairs)
    if len(document) != len(pairs):
        repeated = sorted({key for key, _ in pairs if sum(1 for other, _ in pairs if other == key) > 1})
        raise ValueError(f"the key {repeated[0][:100]!r} appears more than once in one object")
    return document


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is outside the range of a float")
    return value


class BoundedJSONParser(JSONParser):
    """``application/json`` bodies, read up to the cap and checked by :func:`loads_checked`.

    Every body of the APIs is a JSON object (docs/api.md), so anything else is refused here.
    """

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        _check_charset(media_type)
        limit = json_body_limit()
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise TooLarge(f"the JSON body is larger than the {limit} bytes this API accepts")
        encoding = str((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)
        try:
            text = raw.decode(encoding)
        except (LookupError, UnicodeDecodeError) as error:
            raise ParseError(f"the JSON body is not {encoding} text: {error}") from None
        document = loads_checked(text, what="the JSON body")
        if not isinstance(document, dict):
            raise ParseError("the JSON body must be an object")
        return document


def _check_charset(media_type: str | None) -> None:
    """JSON is UTF-8 (RFC 8259): a body that declares another or an unknown charset is refused."""
    _, params = parse_header_parameters(media_type or "")
    charset = params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            media_type or "", detail=f"JSON bodies must be UTF-8; charset {charset[:40]!r} is not accepted"
        )


#: What the APIs parse: JSON only (docs/api.md), so another content type gets 415.
API_PARSERS = (BoundedJSONParser,)
