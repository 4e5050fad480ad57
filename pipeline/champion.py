"""Whether the `champion` alias moves to a report's best student (the `challenger`): plain values,
no I/O, no tracking.

The champion only moves up: to a challenger that beats it on the selection metric, measured on the
same data (the same data file, test and validation sizes). Every outcome is one line that says what
happened and why, e.g. `champion stays cifar10-student v3 (test_accuracy 69.40 %); challenger v7
has 68.90 %`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.params import DIRECTION

PROMOTE = "python -m pipeline.promote"  # the command that moves the alias by hand
CHAMPION_INT8 = "champion-int8"  # follows `champion` to the int8 ONNX form of the same weights


@dataclass(frozen=True)
class Standing:
    """A registered version as the champion decision sees it."""

    version: str
    value: float | None  # its figure on the selection metric; None when it was never recorded
    data: str  # what the figure was measured on (see evaluation_data)


def evaluation_data(data_file_md5: str, test_size: int | None, val_size: int) -> str:
    """The data a selection figure is measured on: equal strings, comparable figures."""
    return f"data file {data_file_md5}, test_size {test_size or 'all'}, val_size {val_size}"


def standing(version: str, tags: Mapping[str, str], select_by: str) -> Standing:
    """A version's standing from the tags the report gave it (see version_tags)."""
    value = tags.get(select_by)
    return Standing(version, None if value is None else float(value), tags.get("evaluated_on", ""))


def version_tags(value: float, select_by: str, data: str) -> dict[str, str]:
    """What the report records on a registered student, for later decisions."""
    return {select_by: repr(value), "evaluated_on": data}


def decide(
    challenger: Standing, champion: Standing | None, select_by: str, name: str
) -> tuple[bool, str]:
    """(whether the champion alias moves to the challenger, the line that says what happened)."""
    new = f"{name} v{challenger.version} ({_shown(select_by, challenger.value)})"
    if champion is None:
        return True, f"champion is {new}: the first"
    if champion.version == challenger.version:
        return False, f"champion stays {new}: it is this report's best student too"
    old = f"{name} v{champion.version} ({_shown(select_by, champion.value)})"
    by_hand = f"to promote the challenger anyway: {PROMOTE} {challenger.version}"
    if champion.value is None:
        return False, (f"champion stays {name} v{champion.version}: it has no {select_by} to "
                       f"compare with; challenger {new}; {by_hand}")  # fmt: skip
    if champion.data != challenger.data:
        return False, (f"champion stays {old}: it was measured on other data ({champion.data}) "
                       f"than challenger v{challenger.version} ({challenger.data}); {by_hand}")  # fmt: skip
    if _better(challenger.value, champion.value, select_by):
        return True, f"champion moves to {new}, up from v{champion.version}"
    return False, (f"champion stays {old}; challenger v{challenger.version} has "
                   f"{_shown(select_by, challenger.value, named=False)}")  # fmt: skip


def _better(value: float, than: float, select_by: str) -> bool:
    return value > than if DIRECTION[select_by] == "max" else value < than


def _shown(select_by: str, value: float | None, named: bool = True) -> str:
    if value is None:
        figure = "none"
    elif select_by.endswith(("accuracy", "agreement")):
        figure = f"{100 * value:.2f} %"
    else:
        figure = f"{value:.4f}"
    return f"{select_by} {figure}" if named else figure
