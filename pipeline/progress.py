"""Progress bars: with rate and ETA in a terminal, off in CI and in logs.

Where bars are off, callers still print one plain line per milestone (an epoch, a finished
download), which is what a CI log should hold.
"""

from __future__ import annotations

import os

from tqdm import tqdm


def bar(shown: bool = True, **kwargs) -> tqdm:
    # disable=None lets tqdm switch itself off when stderr is not a terminal; CI=true (set by
    # GitHub Actions, GitLab and most runners) switches it off even on a pseudo-terminal.
    # `shown` False: not at all (a rank other than 0 of a torchrun training).
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    off = True if ci or not shown else None
    return tqdm(disable=off, dynamic_ncols=True, **kwargs)
