"""A read-only mapping of names to values over one numpy array: the hand-off format between
feature extraction, the privacy engine and the release record, cheap for hundreds of values."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

__all__ = ["NamedValues"]


class NamedValues(Mapping[str, float]):
    """Read-only mapping name -> value, backed by one float64 array in :attr:`names` order.

    Feature extractors with many features (EEG: 16 per channel) and the privacy engine return
    this instead of a dict: building a 1,000-entry dict of Python floats costs more than the
    features or the noise themselves. ``names`` and ``index`` are shared by every window of a
    layout (precomputed once); ``array`` is the window's vector. Values are Python floats when
    read by name; ``to_dict()`` materializes it. Equal to any mapping with the same items.
    """

    __slots__ = ("_array", "_index", "_names")

    def __init__(self, names: tuple[str, ...], index: Mapping[str, int], array: np.ndarray) -> None:
        if array.shape != (len(names),):
            raise ValueError(f"array of shape {array.shape} for {len(names)} names")
        array.flags.writeable = False
        self._names, self._index, self._array = names, index, array

    def __getitem__(self, name: str) -> float:
        return float(self._array[self._index[name]])

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"NamedValues({self.to_dict()!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, in the order of the extractor's specs (the same tuple object per layout)."""
        return self._names

    @property
    def array(self) -> np.ndarray:
        """The values (read-only float64), in :attr:`names` order."""
        return self._array

    def to_dict(self) -> dict[str, float]:
        """A plain dict copy."""
        return dict(zip(self._names, self._array.tolist(), strict=True))
