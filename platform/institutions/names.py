"""Institution names that read the same are the same name.

"St Mary's", "st mary's" and "St Mаry's" (with a Cyrillic "а") would show as one hospital
to a data owner deciding whom to trust, so the control plane keeps one of them. Each name
has a key: Unicode compatibility normalization (NFKC), case folding, single spaces, and
every character that the Unicode confusables table (TR39, via ``confusable_homoglyphs``)
lists as a look-alike of a Latin letter replaced by that letter. Two names with the same
key cannot both exist.
"""

from __future__ import annotations

import functools
import unicodedata

from confusable_homoglyphs import confusables

from fedplatform.errors import InvalidInput

#: Unicode categories never allowed in a name: controls, invisible formatting characters
#: (zero-width spaces, bidirectional overrides), unassigned and private-use code points.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Cs"}


def institution_name_key(name: str) -> str:
    """The key under which ``name`` must be unique (see the module's docstring)."""
    # Look-alikes before and after folding: Greek "Η" looks like "H", its small "η" like nothing.
    latin = _latin(unicodedata.normalize("NFKC", name)).casefold()
    return " ".join(_latin(latin).split())


def check_institution_name(name: str) -> str:
    """``name`` without surrounding space; raises :class:`InvalidInput` if it cannot be one."""
    name = name.strip()
    if not name:
        raise InvalidInput("an institution needs a name")
    hidden = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in _REFUSED_CATEGORIES})
    if hidden:
        raise InvalidInput(
            f"an institution's name may not hold invisible or control characters ({', '.join(hidden)})"
        )
    return name


def _latin(text: str) -> str:
    return "".join(_latin_look_alike(character) for character in text)


@functools.lru_cache(maxsize=4096)
def _latin_look_alike(character: str) -> str:
    if character.isascii():
        return character
    found = confusables.is_confusable(character, preferred_aliases=["latin"], greedy=True) or []
    for entry in found:
        for homoglyph in entry["homoglyphs"]:
            if homoglyph["n"].startswith("LATIN ") and homoglyph["c"].isascii():
                return str(homoglyph["c"])
    return character
