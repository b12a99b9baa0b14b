"""Replay-safe randomness: a ChaCha20 keystream keyed by the release identity, and samplers.

The noise of a release is a deterministic function of a per-device secret key and the release
identity: the window's place ``(device, stream, feature_set, window_index)``, the device ledger's
random *lineage*, and what the window contains (its capture span, segment and gaps,
:meth:`pipeline.windows.Window.content_id`):

``release_key = HMAC-SHA256(device_key, identity)``, keystream = ChaCha20(release_key, nonce 0).

Re-processing the same window therefore yields bit-identical noise (no averaging attack), while a
different key, window, lineage or content gives computationally independent noise: a window index
that comes to cover other data (a lost ledger, a rebuilt grid, a reboot) never reuses noise.

Samplers work on integers of a declared grid (Mironov 2012: the output set never depends on the
input's floating-point representation). Uniforms carry 52 random bits, ``(r + 1/2) 2^-52`` with
``r`` uniform on ``[0, 2^52)`` (computed exactly), so they lie strictly inside (0, 1). Geometric and Bernoulli draws
use inversion in float64: each probability is exact up to a relative error of order ``2^-50``,
and the geometric tail beyond the smallest uniform ``2^-53`` (mass at most ``2^-52``) is truncated; ``docs/privacy.md``
states the resulting slack.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from pipeline.errors import PrivacyError

#: Version tag of the keystream layout; part of every release identity.
LAYOUT = b"biopriv-noise/2"
_NONCE = bytes(16)
_SHIFT = np.uint64(12)
_ONE_BITS = np.uint64(0x3FF0000000000000)
_ONE_MINUS_HALF_ULP = 1.0 - 2.0**-53
_zeros = memoryview(bytes(1 << 16))


def identity_bytes(
    device_id: str,
    stream: str,
    feature_set: str,
    window_index: int,
    lineage: str = "",
    start_ns: int = 0,
    end_ns: int = 0,
    content: bytes = b"",
) -> bytes:
    """Canonical bytes of a release identity (NUL-separated, so fields cannot run together;
    ``content`` last, so its own bytes cannot shift the others)."""
    return b"\x00".join(
        (
            LAYOUT, device_id.encode(), stream.encode(), feature_set.encode(), b"%d" % int(window_index),
            lineage.encode(), b"%d" % start_ns, b"%d" % end_ns, content,
        )
    )


def release_key(device_key: bytes, identity: bytes) -> bytes:
    """The 32-byte ChaCha20 key of one release: ``HMAC-SHA256(device_key, identity)``."""
    return hmac.digest(device_key, identity, hashlib.sha256)


class NoiseStream:
    """Sequential reader of one ChaCha20 keystream; successive reads continue the stream.

    Parameters
    ----------
    key : bytes
        32-byte ChaCha20 key (use :func:`release_key`).
    """

    __slots__ = ("_enc",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise PrivacyError(f"a ChaCha20 key has 32 bytes, got {len(key)}")
        self._enc = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()

    def __repr__(self) -> str:  # never show key material
        return "NoiseStream(<secret>)"

    def raw(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit integers (little-endian, so identical on every platform)."""
        global _zeros
        if 8 * n > len(_zeros):
            _zeros = memoryview(bytes(8 * n))
        return np.frombuffer(self._enc.update(_zeros[: 8 * n]), dtype="<u8")

    def fill(self, out: np.ndarray) -> None:
        """Overwrite ``out`` (a C-contiguous ``<u8`` array) with the next ``out.size`` words of :meth:`raw`."""
        global _zeros
        nbytes = out.nbytes
        if nbytes > len(_zeros):
            _zeros = memoryview(bytes(nbytes))
        self._enc.update_into(_zeros[:nbytes], out.data.cast("B"))

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms strictly inside (0, 1), 52 random bits each."""
        return to_uniform(self.raw(n))


def to_uniform(raw: np.ndarray) -> np.ndarray:
    """Map uniform 64-bit integers to float64 ``(r + 1/2) 2^-52`` with ``r = raw >> 12``.

    ``1 + r 2^-52`` is built from the bits, then ``1 - 2^-53`` subtracted (exact, Sterbenz).
    """
    return ((raw >> _SHIFT) | _ONE_BITS).view(np.float64) - _ONE_MINUS_HALF_ULP


def geometric(u: np.ndarray, log_q: np.ndarray | float) -> np.ndarray:
    """Geometric draws ``P(G = g) = (1 - q) q^g``, g >= 0, by inversion of uniforms ``u``.

    ``log_q = ln q < 0``; ``floor(ln u / ln q)`` is exact up to float rounding of the threshold.
    """
    return np.floor(np.log(u) / log_q)


def discrete_laplace(u1: np.ndarray, u2: np.ndarray, log_q: np.ndarray | float) -> np.ndarray:
    """Discrete Laplace ``P(Z = z) = (1 - q)/(1 + q) q^|z|`` as a difference of two geometrics."""
    return geometric(u1, log_q) - geometric(u2, log_q)


def discrete_gaussian(sigma: np.ndarray, u: np.ndarray, stream: NoiseStream, max_rounds: int = 64) -> np.ndarray:
    """Discrete Gaussian ``P(Z = z) ∝ exp(-z^2 / (2 sigma^2))`` (Canonne, Kamath, Steinke 2020).

    Rejection from a discrete Laplace of scale ``t = floor(sigma) + 1``: accept candidate ``Y``
    with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``. The first candidate of every
    element uses ``u`` (shape ``(3, n)``); rejected elements draw fresh uniforms from ``stream``,
    in element order, so the result stays a deterministic function of the keystream.

    Raises
    ------
    PrivacyError
        If some element is still rejected after ``max_rounds`` rounds (probability < 2^-60).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    t = np.floor(sigma) + 1.0
    log_q = -1.0 / t
    shift = sigma * sigma / t
    two_var = 2.0 * sigma * sigma
    out = np.empty(sigma.shape, dtype=np.float64)
    todo = np.arange(sigma.size)
    u1, u2, u3 = u[0], u[1], u[2]
    for _ in range(max_rounds):
        y = discrete_laplace(u1, u2, log_q[todo])
        d = np.abs(y) - shift[todo]
        ok = u3 < np.exp(-(d * d) / two_var[todo])
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
        if todo.size == 0:
            return out
        fresh = stream.uniform(3 * todo.size).reshape(3, todo.size)
        u1, u2, u3 = fresh[0], fresh[1], fresh[2]
    raise PrivacyError(f"discrete Gaussian rejection did not finish in {max_rounds} rounds")
