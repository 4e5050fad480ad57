"""Per-epoch training checkpoints, so that an interrupted training stage resumes where it stopped.

One file per training, rewritten after every epoch through a temporary file that is flushed to disk
and then renamed, so a kill at any instant (SIGKILL, power loss) leaves the last complete epoch.
The file name carries a key of everything the training depends on (its params, input files and
code): only the same training ever resumes from it, and parallel experiments with other params never
share one. It is removed once the stage's outputs are written. Not a DVC output: it is a means of
recovery, not a result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.files import atomic_path, remove_stale_parts, writing
from pipeline.interrupts import deferred


class Checkpoint:
    def __init__(self, folder: Path, role: str, digest: str):
        self.path = folder / f"{role}-{digest}.pt"

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it cannot be read (then it is removed and
        training starts over: a rename never leaves a partial file, so that means a damaged disk)."""
        remove_stale_parts(self.path)  # what a save killed mid-write left (SIGKILL)
        if not self.path.is_file():
            return None
        try:
            # weights_only: tensors, numbers, strings and containers only; no code is unpickled.
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file means the same: start over
            print(f"warning: ignoring unreadable checkpoint {self.path} ({e}); starting over")
            self.remove()
            return None

    def save(self, state: dict[str, Any]) -> None:
        # deferred: a stop during torch.save would surface as a RuntimeError (see interrupts.py).
        with deferred(), atomic_path(self.path) as tmp, writing(self.path), open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
