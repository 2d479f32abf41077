"""pinnlsr.records: the records round-trip to the keys the run output contract (docs/run_output.md)
documents, and history entries read as their JSON form."""
import json
import math
import re
from pathlib import Path

import pytest

from pinnlsr import runner
from pinnlsr.records import STAGE_KEYS, Evaluation, HistoryEntry, StageRecord, compared
from pinnlsr.report import history_rows

CONTRACT = (Path(__file__).resolve().parents[1] / "docs" / "run_output.md").read_text()


def documented(sentence_start: str, until: str) -> list[str]:
    """The backticked keys of the contract's text from ``sentence_start`` to ``until``."""
    start = CONTRACT.index(sentence_start) + len(sentence_start)
    return re.findall(r"`([a-z_0-9]+)`", CONTRACT[start:CONTRACT.index(until, start)])


def test_every_stage_has_the_documented_keys_in_order():
    assert list(STAGE_KEYS) == documented("Each stage has", "plus extra keys")
    row = StageRecord("adam", 2.5, Evaluation({"rel_l2": 0.1}), {"steps": 3}).to_json()
    assert list(row)[:5] == list(STAGE_KEYS) and row["max_abs_err"] is None and row["residual"] is None


def test_iterative_lsr_history_keeps_the_documented_keys():
    keys = documented("`history` (per outer iteration:", ", and `window`")
    assert list(runner.HISTORY_KEYS + runner.ILSR_HISTORY_KEYS) == keys


@pytest.mark.parametrize("record", [
    StageRecord("lsr", 1.5, Evaluation({"rel_l2": 1e-3, "max_abs_err": 2e-3, "rel_l2_0": 1e-3, "rel_l2_1": 4e-3,
                                        "rel_l2_outside": 5e-4, "max_abs_err_outside": 1e-3}, 3e-6),
                {"rank": 40, "backends": {"pde": "jet(u,u_xx)"}, "seconds_by_phase": {"total": 1.5}}),
    StageRecord("checkpoint", 0.0, Evaluation({}, 0.5), {"path": "model.pt"}),
    StageRecord("adam", 2.0, Evaluation({"rel_l2": 0.9}), {"steps": 10, "rel_l2_mean": 0.9, "n_instances": 4}),
])
def test_stage_records_round_trip_through_json(record):
    row = json.loads(json.dumps(record.to_json()))
    assert {"name", "rel_l2", "max_abs_err", "residual", "seconds"} <= set(row)
    again = StageRecord.from_json(row)
    assert again.to_json() == row
    assert (again.name, again.seconds, again.residual, again.rel_l2) == (record.name, record.seconds, record.residual,
                                                                         record.rel_l2)
    assert {k: v for k, v in again.evaluation.errors.items() if k not in record.extras} == dict(record.evaluation.errors)


def test_a_stage_without_a_name_is_refused():
    with pytest.raises(ValueError, match="'name'"):
        StageRecord.from_json({"rel_l2": 0.1})


def test_history_entries_read_as_their_json_form():
    e = HistoryEntry(2, 0.5, residual=1e-3, errors={"rel_l2": 1e-4, "max_abs_err": 3e-4},
                     extras={"validation_residual": 2e-3, "accepted": True, "linearized_residual": None})
    data = e.to_json()
    assert data == {"iteration": 2, "seconds": 0.5, "residual": 1e-3, "rel_l2": 1e-4, "max_abs_err": 3e-4,
                    "validation_residual": 2e-3, "accepted": True, "linearized_residual": None}
    assert dict(e) == data and e == data and e["accepted"] and e.get("window") is None and "loss" not in e
    assert HistoryEntry.from_json(json.loads(json.dumps(data))) == e
    assert e.to_json(("iteration", "residual", "window")) == {"iteration": 2, "residual": 1e-3, "window": None}
    tagged = e.with_extras(window=0.5)
    assert tagged["window"] == 0.5 and "window" not in e and tagged.rel_l2 == e.rel_l2 == 1e-4


def test_history_rows_take_the_residual_from_the_loss_where_only_the_loss_was_logged():
    rows = history_rows("adam", [HistoryEntry(0, 0.1, loss=4.0), HistoryEntry(5, 0.2, residual=1.5,
                                                                               errors={"rel_l2": 0.3})])
    assert rows == [{"method": "adam", "iteration": 0, "seconds": 0.1, "loss": 4.0, "residual": 2.0, "rel_l2": None},
                    {"method": "adam", "iteration": 5, "seconds": 0.2, "loss": None, "residual": 1.5, "rel_l2": 0.3}]


def test_compared_keeps_the_records_and_writes_the_flat_keys_from_them():
    before = Evaluation({"rel_l2": 0.5}, 2.0, validation=3.0, terms={"pde": 1.9})
    after = Evaluation({"rel_l2": 0.01}, 0.1)
    d = compared("validation_residual", before=before, after=after)
    assert d["before"] is before and d["after"] is after
    assert {k: v for k, v in d.items() if k not in ("before", "after")} == {
        "rel_l2_before": 0.5, "residual_before": 2.0, "validation_residual_before": 3.0,
        "terms_before": {"pde": 1.9}, "rel_l2_after": 0.01, "residual_after": 0.1}
    assert math.isclose(before.rel_l2 / after.rel_l2, 50.0) and after.max_abs_err is None
