"""Simplicity and speed priors over model structure.

Kernel structures (the simplicity prior)
    A structure is a sum of products of base kernels drawn from the search
    list, at most ``max_terms`` base kernels in all. Its description length in
    nats is the length of a prefix code for the expression tree and its
    hyperparameters::

        DL(s) = log(max_terms)                  # how many base kernels, k
              + k * log(|B|)                     # which base kernel at each leaf
              + (k - 1) * log(|ops|)             # which operator joins each pair
              + HYPER_NATS * h(s)                # h: number of continuous hyperparameters

    and ``p(s) ∝ exp(-simplicity * DL(s)) * 2 ** (-speed * log2 cost(s))``
    ``= exp(-simplicity * DL(s)) * cost(s) ** -speed`` where
    ``cost(s)`` is the flops to evaluate one kernel entry on ``dim`` inputs
    (the compute-cost prior). With ``simplicity = 1`` and ``speed = 0`` this is
    the two-part-code (MDL) prior; ``simplicity = 0`` is uniform over structures.

Network depth (the speed prior)
    ``p(depth) ∝ 2 ** (-strength * log2 FLOPs(depth)) = FLOPs(depth) ** -strength``
    for ``depth`` in ``0..max_depth`` hidden layers, where FLOPs counts one
    forward pass (``2 * sum(fan_in * fan_out)``). This is Levin's Kt (description
    plus log2 time, in bits) with the description part held fixed and the time
    term weighted by ``strength``; ``strength = 1`` gives ``p ∝ 1 / FLOPs``.

Example:
    >>> from priorguard.priors.kernels import StructureSearch
    >>> prior = structure_prior(StructureSearch(search=["rbf", "linear"], max_terms=2), dim=1)
    >>> round(sum(p for _, p in prior), 12)
    1.0
    >>> prior[0][0].expression
    'linear'
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from priorguard.priors.kernels import KERNELS, CompositeKernel, StructureSearch

#: Nats charged per continuous hyperparameter in the description length.
HYPER_NATS = 1.0



@dataclass(frozen=True)
class KernelStructure:
    """One candidate structure: a sum of products of base kernel kinds.

    Attributes:
        products: each inner tuple is a product of base kinds, sorted; the outer
            tuple is their sum, sorted. Canonical, so equal structures compare equal.
    """

    products: tuple[tuple[str, ...], ...]

    @property
    def num_leaves(self) -> int:
        return sum(len(p) for p in self.products)

    @property
    def expression(self) -> str:
        return " + ".join(" * ".join(p) for p in self.products)

    def num_hyperparameters(self, dim: int, *, ard: bool = True) -> int:
        n = 0
        for kind in (k for p in self.products for k in p):
            for param in KERNELS[kind].params:
                n += dim if (param == "lengthscale" and ard) else 1
        return n

    def flops(self, dim: int) -> float:
        per_dim = sum(KERNELS[k].flops[0] for p in self.products for k in p)
        const = sum(KERNELS[k].flops[1] for p in self.products for k in p)
        return float(per_dim * dim + const + (self.num_leaves - 1))

    def description_length(self, search: StructureSearch, dim: int) -> float:
        k = self.num_leaves
        return (
            math.log(search.max_terms)
            + k * math.log(len(search.search))
            + (k - 1) * math.log(len(search.operators))
            + HYPER_NATS * self.num_hyperparameters(dim, ard=search.ard)
        )

    def to_kernel(self, *, ard: bool = True) -> object:
        """The fixed kernel spec of this structure (default hyperpriors)."""

        def leaf(kind: str) -> object:
            cls = KERNELS[kind].spec
            kwargs = {"ard": ard} if "ard" in cls.model_fields else {}
            return cls(kind=kind, **kwargs)

        terms = []
        for prod in self.products:
            leaves = [leaf(k) for k in prod]
            terms.append(leaves[0] if len(leaves) == 1 else CompositeKernel(kind="product", terms=leaves))
        return terms[0] if len(terms) == 1 else CompositeKernel(kind="sum", terms=terms)


def enumerate_structures(search: StructureSearch) -> list[KernelStructure]:
    """Every distinct structure the search allows (canonical, no duplicates)."""
    kinds = sorted(search.search)
    allow_sum = "sum" in search.operators
    allow_prod = "product" in search.operators
    products: list[tuple[str, ...]] = []
    for size in range(1, search.max_terms + 1):
        if size > 1 and not allow_prod:
            break
        products.extend(itertools.combinations_with_replacement(kinds, size))
    out: set[tuple[tuple[str, ...], ...]] = set()
    for n_terms in range(1, search.max_terms + 1):
        if n_terms > 1 and not allow_sum:
            break
        for combo in itertools.combinations_with_replacement(products, n_terms):
            if sum(len(p) for p in combo) <= search.max_terms:
                out.add(tuple(sorted(combo)))
    return [KernelStructure(s) for s in sorted(out, key=lambda s: (sum(map(len, s)), s))]


def structure_log_weights(search: StructureSearch, dim: int) -> list[tuple[KernelStructure, float]]:
    """Unnormalised log prior (nats) of each structure: -simplicity*DL - speed*ln(cost)."""
    return [
        (s, -search.simplicity * s.description_length(search, dim) - search.speed * math.log(s.flops(dim)))
        for s in enumerate_structures(search)
    ]


def structure_prior(search: StructureSearch, dim: int) -> list[tuple[KernelStructure, float]]:
    """Normalised prior mass of each structure, most probable first.

    Args:
        search: the structure search spec.
        dim: input dimension the kernels see (ARD lengthscales count per dimension).

    Returns:
        ``[(structure, probability), ...]`` sorted by decreasing probability.
    """
    weights = structure_log_weights(search, dim)
    top = max(w for _, w in weights)
    z = sum(math.exp(w - top) for _, w in weights)
    out = [(s, math.exp(w - top) / z) for s, w in weights]
    return sorted(out, key=lambda t: (-t[1], t[0].num_leaves, t[0].expression))


def layer_widths(hidden: list[int], depth: int) -> list[int]:
    """Hidden widths of a depth-``depth`` network (the last declared width repeats)."""
    if depth == 0:
        return []
    if not hidden:
        raise ValueError("a network of depth >= 1 needs at least one declared hidden width")
    return [hidden[i] if i < len(hidden) else hidden[-1] for i in range(depth)]


def mlp_flops(in_dim: int, out_dim: int, widths: list[int]) -> float:
    """Multiply-add flops of one forward pass: ``2 * sum(fan_in * fan_out)``."""
    sizes = [in_dim, *widths, out_dim]
    return float(2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])))


def depth_prior(hidden: list[int], *, in_dim: int, out_dim: int, max_depth: int,
                strength: float) -> list[tuple[int, float]]:
    """The speed prior over depth 0..max_depth: ``p(d) ∝ 2 ** (-strength * log2 FLOPs(d))``.

    Returns:
        ``[(depth, probability), ...]`` for depth 0..max_depth.

    Example:
        >>> [round(p, 3) for _, p in depth_prior([8], in_dim=1, out_dim=1, max_depth=2, strength=0.0)]
        [0.333, 0.333, 0.333]
    """
    logs = [-strength * math.log(mlp_flops(in_dim, out_dim, layer_widths(hidden, d)))
            for d in range(max_depth + 1)]
    top = max(logs)
    z = sum(math.exp(x - top) for x in logs)
    return [(d, math.exp(x - top) / z) for d, x in enumerate(logs)]
