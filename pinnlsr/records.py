"""What a run measured, one record type each.

- :class:`Evaluation`: a network evaluated once: its errors against the reference, its residual
  norm, its validation score and the residual norm per term. A refinement's diagnostics hold
  one ``before`` and one ``after`` it (:func:`compared`).
- :class:`StageRecord`: one stage of a pipeline; :meth:`StageRecord.to_json` is a row of
  metrics.json's ``stages`` (the run output contract, docs/run_output.md).
- :class:`HistoryEntry`: one logged iteration of a method (training step, Gauss–Newton or
  Iterative LSR iteration): a row of history.csv, an entry of a stage's ``history``.

Code reads these records (``evaluation.rel_l2``, ``entry.residual``); the flat keys
(``rel_l2_after``, ``residual_before``, ...) that refinement diagnostics also carry are written
from them for printing and are never parsed back.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the error metrics of :func:`pinnlsr.metrics.model_errors`: these names and ``<name>_<suffix>``
ERROR_METRICS = ("rel_l2", "max_abs_err")


def is_error_key(key: str) -> bool:
    """Whether ``key`` names an error metric (rel_l2, max_abs_err, rel_l2_<j>, max_abs_err_<region>, ...)."""
    return any(key == m or key.startswith(m + "_") for m in ERROR_METRICS)


def _split_errors(data: Mapping[str, Any]) -> tuple[dict, dict]:
    errors = {k: v for k, v in data.items() if is_error_key(k)}
    return errors, {k: v for k, v in data.items() if k not in errors}


@dataclass(frozen=True)
class Evaluation:
    """A network evaluated once.

    ``errors``: error metrics against the reference ({} without one; see
    :func:`pinnlsr.metrics.model_errors`); ``residual``: ||f|| on the collocation points;
    ``validation``: the score a method selects by (held-out error or validation residual), when
    measured; ``terms``: ||f_t|| per residual term, when measured."""

    errors: Mapping[str, float] = field(default_factory=dict)
    residual: float | None = None
    validation: float | None = None
    terms: Mapping[str, float] | None = None

    @property
    def rel_l2(self) -> float | None:
        return self.errors.get("rel_l2")

    @property
    def max_abs_err(self) -> float | None:
        return self.errors.get("max_abs_err")

    def flat(self, tag: str, validation_key: str = "validation") -> dict[str, Any]:
        """The flat keys users print: ``<metric>_<tag>`` per error metric, ``residual_<tag>``,
        ``<validation_key>_<tag>`` and ``terms_<tag>`` where measured."""
        out: dict[str, Any] = {f"{k}_{tag}": v for k, v in self.errors.items()}
        if self.residual is not None:
            out[f"residual_{tag}"] = self.residual
        if self.validation is not None:
            out[f"{validation_key}_{tag}"] = self.validation
        if self.terms is not None:
            out[f"terms_{tag}"] = dict(self.terms)
        return out


def compared(validation_key: str = "validation", **evaluations: Evaluation) -> dict[str, Any]:
    """Diagnostics entries of a refinement: each named evaluation (``before``, ``after``, ...)
    as a record, which code reads, and as flat ``<key>_<name>`` keys (:meth:`Evaluation.flat`)."""
    out: dict[str, Any] = dict(evaluations)
    for name, evaluation in evaluations.items():
        out.update(evaluation.flat(name, validation_key))
    return out


#: the keys every stage of metrics.json has, in this order
STAGE_KEYS = ("name", "rel_l2", "max_abs_err", "residual", "seconds")


def _plain(value: Any) -> Any:
    """``value`` with records replaced by their JSON form (lists and dicts searched)."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class StageRecord:
    """One stage of a pipeline: its ``name``, wall ``seconds``, the :class:`Evaluation` of the
    network it produced and its own keys (``extras``: steps, rank, history, ...; records among
    them are written by their ``to_json``)."""

    name: str
    seconds: float
    evaluation: Evaluation = field(default_factory=Evaluation)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def rel_l2(self) -> float | None:
        return self.evaluation.rel_l2

    @property
    def max_abs_err(self) -> float | None:
        return self.evaluation.max_abs_err

    @property
    def residual(self) -> float | None:
        return self.evaluation.residual

    def to_json(self) -> dict[str, Any]:
        """The metrics.json row: name, rel_l2, max_abs_err, residual, seconds, the other error
        metrics, then the extras (an extra of the same name as an error metric wins)."""
        row: dict[str, Any] = {"name": self.name, "rel_l2": self.rel_l2, "max_abs_err": self.max_abs_err,
                               "residual": self.residual, "seconds": self.seconds}
        row.update({k: v for k, v in self.evaluation.errors.items() if k not in row})
        row.update(_plain(self.extras))
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StageRecord:
        """The record of a metrics.json row (the inverse of :meth:`to_json`: error metrics by name,
        unset rel_l2/max_abs_err left out, every other key an extra)."""
        if "name" not in row:
            raise ValueError(f"a metrics.json stage needs a 'name', got the keys {sorted(row)}")
        errors, rest = _split_errors(row)
        errors = {k: v for k, v in errors.items() if not (k in ERROR_METRICS and v is None)}
        extras = {k: v for k, v in rest.items() if k not in STAGE_KEYS}
        return cls(row["name"], rest.get("seconds"), Evaluation(errors, rest.get("residual")), extras)


#: the fields of a history entry that are left out of its JSON form when unset
_OPTIONAL = ("seconds", "loss", "residual")


@dataclass(frozen=True, eq=False)
class HistoryEntry(Mapping):
    """One logged iteration of a method: ``iteration`` (step), ``seconds`` since the method
    started, the training ``loss`` or the ``residual`` norm, the error metrics against the
    reference (``errors``) and the method's own quantities (``extras``: validation_residual,
    accepted, damping, window, ...).

    Reads as the mapping of its JSON form (``entry["validation_residual"]``, ``entry.get("window")``);
    two entries are equal when their JSON forms are."""

    iteration: int
    seconds: float | None = None
    loss: float | None = None
    residual: float | None = None
    errors: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rel_l2(self) -> float | None:
        return self.errors.get("rel_l2")

    def to_json(self, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """{"iteration", "seconds", "loss", "residual" (those set), error metrics, extras}; with
        ``keys`` exactly those keys (None where the entry has no value)."""
        data: dict[str, Any] = {"iteration": self.iteration}
        data.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        data.update(self.errors)
        data.update(self.extras)
        return data if keys is None else {k: data.get(k) for k in keys}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryEntry:
        """The entry of a JSON form (:meth:`to_json`)."""
        errors, rest = _split_errors(data)
        extras = {k: v for k, v in rest.items() if k not in ("iteration",) + _OPTIONAL}
        return cls(rest["iteration"], rest.get("seconds"), rest.get("loss"), rest.get("residual"), errors, extras)

    def with_extras(self, **extras: Any) -> HistoryEntry:
        """A copy with more extras (e.g. the time window a marching run was in)."""
        return HistoryEntry(self.iteration, self.seconds, self.loss, self.residual, self.errors,
                            {**self.extras, **extras})

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


__all__ = ["Evaluation", "StageRecord", "HistoryEntry", "compared", "is_error_key", "STAGE_KEYS"]
