"""How many clips each section holds: the generator's own small counts, or the real data set's.

``--like-dcase2021`` gives every section the counts of the real DCASE 2021 Task 2 data
(docs/reproduction.md "Scale"): 1,000 source training clips (gearbox a little more), 3 target
training clips, and per domain 200 test clips, half of them anomalous (in the real development data
about 100 normal and 100 anomalous per domain), except the gearbox evaluation sections, whose
test clips per domain are those of the official evaluator's ground-truth files. ``fraction``
scales the source training and test counts (not the 3 target clips), so that the same layout
can be written at a tenth of the size.
"""

from __future__ import annotations

from typing import NamedTuple

from asd.infra.data import DataError


class SectionCounts(NamedTuple):
    """Clips of one (dataset, machine, section); each test domain has half of its clips
    anomalous (the extra one normal when odd)."""

    source_train: int
    target_train: int
    source_test: int
    target_test: int


REAL_TRAIN = 1000  # source training clips per section in the real data
REAL_TARGET = 3
REAL_TEST = 200  # test clips per section and domain
REAL_GEARBOX_TRAIN = {"00": 1001, "01": 1008, "02": 1008, "03": 1005, "04": 1092, "05": 1008}
REAL_GEARBOX_EVAL_TEST = {"03": (234, 286), "04": (252, 234), "05": (210, 212)}


def section_counts(
    machine: str,
    section: str,
    *,
    like_dcase2021: bool = False,
    fraction: float = 1.0,
    n_source: int = 100,
    n_target: int = 3,
    n_test: int = 40,
) -> SectionCounts:
    """The clips of one section: ``n_*`` as given, or the real data set's (times ``fraction``)."""
    if not like_dcase2021:
        return SectionCounts(n_source, n_target, n_test, n_test)
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction {fraction}: expected more than 0 and at most 1")
    train = REAL_GEARBOX_TRAIN.get(section, REAL_TRAIN) if machine == "gearbox" else REAL_TRAIN
    tests = (REAL_TEST, REAL_TEST)
    if machine == "gearbox":
        tests = REAL_GEARBOX_EVAL_TEST.get(section, tests)
    return SectionCounts(
        max(1, round(train * fraction)), REAL_TARGET, *(max(2, round(t * fraction)) for t in tests)
    )
