"""Where a result came from: the project root, git state, and the key of one pipeline invocation.

Plain subprocess and hashing; no tracking library. DVC runs queued and --temp experiments in a copy
of the repository under .dvc/tmp/exps/, so "the project root" here means the original checkout,
found by stripping that part of the path: results from such runs must land beside the others.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

EXPS_TMP = (".dvc", "tmp", "exps")
# What defines a pipeline's results, besides the data (pinned by data.md5 in params.yaml).
INPUTS = ("params.yaml", "dvc.yaml", "pipeline", "requirements.lock")


def project_root(start: Path | None = None) -> Path:
    """The checkout the pipeline belongs to, also when DVC runs it from a temporary copy."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(EXPS_TMP) + 1):
        if parts[i : i + len(EXPS_TMP)] == EXPS_TMP:
            return Path(*parts[:i])
    return path


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit() -> str:
    return (_git("rev-parse", "HEAD") or "unknown").strip()


def git_dirty() -> bool:
    """True when the pipeline's inputs (code, params, stages, lock) differ from HEAD. Outputs do not
    count: DVC rewrites them, dvc.lock and .gitignore files while the pipeline runs."""
    return bool((_git("status", "--porcelain", "--", *INPUTS) or "").strip())


def dvc_experiment() -> str | None:
    """The experiment's name when DVC runs one (`dvc exp run`), else None."""
    return os.environ.get("DVC_EXP_NAME") or None


def invocation_key(inputs: tuple[str, ...] = INPUTS) -> str:
    """Equal for every stage of one pipeline invocation, different across invocations that could
    produce different results: a hash of the commit, the experiment's name and the content of the
    pipeline's inputs (params, stage definitions, code). Outputs are left out on purpose: DVC
    rewrites them (and dvc.lock) between the stages of one invocation."""
    return digest(git_commit(), dvc_experiment() or "", content_digest(inputs))


def digest(*parts: str) -> str:
    """A short SHA-256 of `parts`, for keys that must differ whenever one of them does."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def content_digest(inputs: tuple[str, ...]) -> str:
    """SHA-256 of the named files and of the .py files under the named folders, with their paths."""
    h = hashlib.sha256()
    for name in inputs:
        root = Path(name)
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(str(path).encode() + b"\0")
            h.update(path.read_bytes() if path.is_file() else b"-")
    return h.hexdigest()
