"""Shape buckets: few distinct array sizes, so compiled programs are shared across nearby sizes."""

from __future__ import annotations

from typing import Literal

__all__ = ["shape_bucket"]


def shape_bucket(n: int, *, direction: Literal["up", "down"], per_octave: int = 8, exact_below: int = 64) -> int:
    """``n`` rounded to a bucket: a multiple of ``2^(floor(log2 n) + 1) / (2 * per_octave)``.

    There are ``per_octave`` buckets between consecutive powers of two, so
    rounding changes ``n`` by less than ``1 / per_octave`` of it.

    Args:
        n: the size (>= 0).
        direction: ``"up"`` (pad to the bucket) or ``"down"`` (drop down to it).
        per_octave: buckets per octave, a power of two.
        exact_below: sizes up to this are returned as they are.

    Returns:
        The bucket size.

    Example:
        >>> [shape_bucket(n, direction="up") for n in (64, 65, 100, 129)]
        [64, 72, 104, 144]
        >>> [shape_bucket(n, direction="down") for n in (65, 100, 600)]
        [64, 96, 576]
        >>> [shape_bucket(n, direction="up", per_octave=2, exact_below=0) for n in (1, 3, 5, 7, 9, 13)]
        [1, 3, 6, 8, 12, 16]
    """
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"per_octave must be a power of two, got {per_octave}")
    if n <= max(exact_below, 1):
        return n
    step = 2 ** max(0, n.bit_length() - per_octave.bit_length())
    if direction == "up":
        return -(-n // step) * step
    return (n // step) * step
