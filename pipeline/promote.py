"""Move the `champion` alias by hand: `python -m pipeline.promote VERSION [--model NAME]`.

The report moves it only to a challenger that beats the champion on the same data; this command
moves it to any version of the registered student (registry.student of params.yaml by default),
for when you know better: after a change of data, say, when no figure is comparable. Prints what it
did, with the figures the report recorded on both versions.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import champion, params, tracking
from pipeline.errors import UserError
from pipeline.stages import _guard

CHAMPION = "champion"


class PromoteError(UserError):
    """The version cannot be the champion."""


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _guard.split_verbose(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline.promote", description=__doc__)
    parser.add_argument("version", help="the version number to make the champion")
    parser.add_argument("--model", help="the registered model (default: registry.student)")
    args = parser.parse_args(argv)
    return _guard.guarded("promote", lambda: promote(args.version, args.model), verbose)


def promote(version: str, name: str | None) -> None:
    p = params.load_all()
    tracking.check_store(tracking.tracking_uri(), p.mlflow.experiment)  # and opens it
    name = name or p.registry.student
    chosen = tracking.get_version(name, version)
    fmt = chosen.tags.get(tracking.FORMAT_TAG, "pytorch")
    if fmt != "pytorch":  # the champion is served and predicts from image files: the pyfunc
        raise PromoteError(f"{name} v{chosen.version} is the {fmt} ONNX form of a model; promote "
                           "its PyTorch version (tag format=pytorch), and champion-int8 follows")  # fmt: skip
    before = tracking.by_alias(name, CHAMPION)
    tracking.set_alias(name, CHAMPION, chosen.version)
    was = "" if before is None else f", from v{before.version} ({_figures(before)})"
    print(f"champion is {name} v{chosen.version} ({_figures(chosen)}), by hand{was}")
    print(tracking.follow_alias(name, CHAMPION, "int8", champion.CHAMPION_INT8))


def _figures(version: tracking.Version) -> str:
    accuracy = version.tags.get("test_accuracy")
    return (
        "no test_accuracy recorded"
        if accuracy is None
        else f"test_accuracy {100 * float(accuracy):.2f} %"
    )


if __name__ == "__main__":
    sys.exit(main())
