"""Public channel labels: standard 10-10 electrode names, or indices.

Channel names come from devices and may say anything ("patient-4711 left ear"). Names that end up
in a public release (EEG features are per channel: ``alpha_rel.Fz``) are therefore mapped to the
standard 10-10 / 10-20 electrode name they denote, or else to the channel's index (``ch3``).
Recording conventions are understood: an ``EEG`` prefix, reference suffixes (``-REF``, ``-LE``,
``-A1``...), the dots EDF pads names with (``Fc5.``), any letter case, and the old 10-20 names
T3/T4/T5/T6.
"""

from __future__ import annotations

import functools
import re

__all__ = ["public_channel_names", "standard_name"]

_ROWS = ("Fp", "AF", "F", "FT", "FC", "T", "C", "TP", "CP", "P", "PO", "O", "I", "N")
#: Standard electrode names of the 10-10 system (plus reference sites), by upper-case spelling.
STANDARD: dict[str, str] = {
    name.upper(): name
    for name in (
        *(f"{row}{pos}" for row in _ROWS for pos in ("z", *map(str, range(1, 11)))),
        "T3", "T4", "T5", "T6", "A1", "A2", "M1", "M2",
    )
}
_PREFIX = re.compile(r"^(EEG|EEG:)\s*", re.IGNORECASE)
_SUFFIX = re.compile(r"[-_\s]?(REF|LE|RE|AVG|AR|CAR|A1|A2|M1|M2|A1A2|LM|RM)$", re.IGNORECASE)


def standard_name(channel: str) -> str | None:
    """The standard electrode name ``channel`` denotes, or None."""
    s = _PREFIX.sub("", channel.strip()).strip(". ")
    for candidate in (s, _SUFFIX.sub("", s).strip(". -_")):
        hit = STANDARD.get(candidate.upper())
        if hit is not None:
            return hit
    return None


@functools.lru_cache(maxsize=1024)
def public_channel_names(channels: tuple[str, ...]) -> tuple[str, ...]:
    """One public label per channel: its standard name, else ``ch<index>`` (also for a repeat)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, ch in enumerate(channels):
        name = standard_name(ch)
        if name is None or name in seen:
            name = f"ch{i}"
        seen.add(name)
        out.append(name)
    return tuple(out)
