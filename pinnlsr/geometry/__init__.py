"""Domains and seedable samplers for collocation points.

Every point set is a ``torch.Tensor`` of shape ``(n, d)`` (one row per point).
Randomness comes only from a ``torch.Generator`` passed by the caller: the same
generator state gives the same points, and nothing here touches the global RNG
or keeps global state.

Random numbers are drawn in float64 on the generator's device and the result is
then cast to the requested ``dtype`` / ``device``; the same seed therefore gives
the same points (up to rounding) for every dtype and output device.

Classes
-------
``Domain``        abstract base (``dim``, ``bbox``, ``contains``, samplers, ``grid``)
``Box``           axis-aligned box in any dimension ``d >= 1``
``Interval``      ``Box`` in 1-D with attributes ``a`` and ``b``
``Ball``          ball in any dimension; ``Disk`` is the 2-D ball
``Difference``    ``base`` minus open ``holes`` (also ``base - hole``)
``TimeDomain``    space-time product, time is the LAST coordinate
``PointSet``      a fixed, finite set of points

Modules: ``sampling`` (validation, ``uniform_grid``, rejection sampling), ``domain`` (``Domain``,
``Difference``, ``PointSet``), ``shapes`` (``Box``, ``Interval``, ``Ball``, ``Disk``), ``spacetime``
(``TimeDomain``); every name is imported from ``pinnlsr.geometry``.

Grids (``uniform_grid`` and ``Domain.grid``) use ``"ij"`` (meshgrid) order: the
FIRST coordinate varies slowest and the LAST coordinate varies fastest.

Membership (``contains``) is for the closed set with a tolerance of
``max(1e-12, 4 * eps(x.dtype))`` relative to the domain's size scale
``max(1, max|bbox coordinate|, max bbox extent)``.
"""

from .domain import Difference, Domain, PointSet
from .sampling import uniform_grid
from .shapes import Ball, Box, Disk, Interval
from .spacetime import TimeDomain

__all__ = [
    "Domain",
    "Box",
    "Interval",
    "Ball",
    "Disk",
    "Difference",
    "TimeDomain",
    "PointSet",
    "uniform_grid",
]
