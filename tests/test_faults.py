"""Fault injection, per stage: every stage is run by real DVC as a real process, and made to fail
at a point this module chooses: an exception in its computation (the training loop, for the
training stages), in its data loading, in a tracking call, in its output writing; SIGKILL; a full
disk (a real tmpfs with no space left); a read-only output folder (a real read-only bind mount).

Each time: one `error: <stage>: ...` line and a non-zero exit (no line can outlive SIGKILL), no
traceback, none of the stage's outputs left behind (DVC removed them before the run, so anything
there would be half of a failed run's), no MLflow run left RUNNING (for SIGKILL, once the next
stage has started), and then a plain `dvc repro` completes with the outputs of an undisturbed run.
The injection itself is tests/faults/sitecustomize.py: the pipeline's code holds no test hooks.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from project import TWO_VARIANTS, Project, copy_project

pytestmark = pytest.mark.slow

FAULTS_DIR = ROOT / "tests" / "faults"
# Measured latencies: these outputs differ between any two runs of the same models.
TIMED = {"reports/speed.json", "reports/comparison.md", "reports/tradeoff.png",
         "reports/export_speed.json", "reports/pareto.png",
         "metrics/teacher-42.json", "metrics/ce-42.json", "metrics/kd-42.json"}  # fmt: skip
TRACKING = "mlflow.tracking.client:MlflowClient.log_batch:2:mlflow"  # the call after log_params
# Per stage: where each injected exception fires (<module>:<attribute>:<n-th call>), and the
# folder that is made full or read-only. With 2 epochs of 7 batches, Adam's 10th step is in epoch
# 2, after the first checkpoint; a training stage's 1st and 2nd file writes are its checkpoints.
STAGES = {
    "download": {
        "compute": "pipeline.data:_stack:1",  # converting the batches to one tensor
        "load": "pipeline.data:_unpickle:2",  # reading the archive
        "write": "pipeline.files:_publish:1",
        "folder": "data",
    },
    "train_teacher@42": {
        "compute": "torch.optim.adam:Adam.step:10",
        "load": "pipeline.data:load:1",
        "write": "pipeline.files:_publish:4",  # the second of its three outputs
        "folder": "models/teachers",
    },
    "teacher_outputs@42": {
        "compute": "pipeline.train:teacher_outputs:1",
        "load": "pipeline.data:load:1",
        "write": "pipeline.files:_publish:1",
        "folder": "data/teacher_outputs",
    },
    "distill@kd-42": {
        "compute": "torch.optim.adam:Adam.step:10",
        "load": "pipeline.data:load:1",
        "write": "pipeline.files:_publish:4",
        "folder": "models/students",
    },
    "evaluate": {
        "compute": "pipeline.evaluate:predict:3",
        "load": "pipeline.data:load:1",
        "write": "pipeline.files:_publish:2",
        # not metrics/ or plots/confusion/: DVC removes a folder that is an output itself before
        # the stage runs, and a mount point cannot be removed
        "folder": "reports",
    },
    "export": {
        "compute": "pipeline.export:quantize_int8:2",  # the second student's int8
        "load": "pipeline.data:load:1",
        "write": "pipeline.files:_publish:2",
        "folder": "reports",
    },
    "report": {
        "compute": "pipeline.report:statistics:1",
        "load": "pipeline.stages._inputs:json_file:1",
        "write": "pipeline.files:_publish:2",
        "folder": "reports",
    },
}
# What the one line must say, per fault.
SAYS = {
    "compute": "injected fault in",
    "load": "injected fault in",
    "track": "the MLflow tracking store sqlite:///",
    "write": "cannot write",
    "full": "No space left on device",
    "readonly": "Read-only file system",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    # Two of the four variants: every fault is injected into distill@kd-42, and each recovery
    # reruns what reads the models (evaluate, export), whose cost grows with every model.
    return copy_project(tmp_path_factory.mktemp("project"),
                        tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz",
                        teacher__epochs=2, student__epochs=2, train__batch_size=32,
                        variants=TWO_VARIANTS)  # fmt: skip


@pytest.fixture(scope="module")
def undisturbed(project) -> dict[str, str]:
    """MD5 of every output of an undisturbed `dvc repro`."""
    project.run("dvc", "repro")
    return digests(project)


def outputs(project: Project, stage: str | None = None) -> list[Path]:
    """The files DVC records as outputs (of `stage`, or of every stage), found through dvc.lock."""
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    paths = [project.path / o["path"] for name, s in lock.items() if stage in (None, name)
             for o in s.get("outs", [])]  # fmt: skip
    return [f for p in paths for f in ([p] if not p.is_dir() else sorted(p.rglob("*")))
            if not f.is_dir()]  # fmt: skip


def digests(project: Project) -> dict[str, str]:
    return {
        str(f.relative_to(project.path)): hashlib.md5(f.read_bytes()).hexdigest()
        for f in outputs(project)
        if str(f.relative_to(project.path)) not in TIMED
    }


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"mount {' '.join(args)}: {done.stderr.strip()}"
        if os.environ.get("CI"):
            raise AssertionError(f"{reason}; CI runs as root and must be able to mount")
        pytest.skip(f"needs root to mount a real full or read-only file system ({reason})")


@contextlib.contextmanager
def mounted(folder: Path, fault: str):
    """`folder` as a read-only bind mount of itself, or as a tmpfs holding a copy of its files
    and then filled to the last byte."""
    if fault == "readonly":
        mount("--bind", str(folder), str(folder))
        try:
            mount("-o", "remount,bind,ro", str(folder))
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    with tempfile.TemporaryDirectory() as saved:
        shutil.copytree(folder, saved, dirs_exist_ok=True)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) + (1 << 20)
        mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        try:
            shutil.copytree(saved, folder, dirs_exist_ok=True)
            fill(folder / ".filler")
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)


def fill(path: Path) -> None:
    """Write to `path` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC


def inject(project: Project, stage: str, fault: str) -> tuple[int, str]:
    """Run `stage` through DVC with `fault`; its exit status and output."""
    repro = ("dvc", "repro", "--single-item", "--force", stage)
    spec = STAGES[stage]
    if fault in ("full", "readonly"):  # as on a fresh checkout: no outputs yet, nothing to delete
        for path in outputs(project, stage):
            path.unlink()
        with mounted(project.path / spec["folder"], fault):
            return project.call(*repro)
    if fault == "track":
        target = TRACKING
    else:  # SIGKILL in the middle of the computation
        where = spec["compute" if fault == "sigkill" else fault]
        target = f"{where}:{ {'write': 'oserror', 'sigkill': 'sigkill'}.get(fault, 'raise') }"
    env = {"PYTHONPATH": str(FAULTS_DIR), "PIPELINE_FAULT": target}
    return project.call(*repro, env=env)


def runs_by_id(project: Project) -> dict:
    return {r.info.run_id: r for r in project.runs()}


FAULTS = ["compute", "load", "track", "write", "sigkill", "full", "readonly"]
# The export stage reads, writes and tracks through the same code as evaluate (its inputs, its
# outputs' staging, its folder checks, its run), so it gets the faults of its own work only: in
# quantisation and in writing its files; each costs an export of every model twice.
ONLY = {"export": ["compute", "write"]}


@pytest.mark.parametrize(
    ("stage", "fault"),
    [(stage, fault) for stage in STAGES for fault in ONLY.get(stage, FAULTS)],
)
def test_a_fault_ends_in_one_line_and_the_next_repro_recovers(project, undisturbed, stage, fault):
    before = runs_by_id(project)
    status, out = inject(project, stage, fault)

    assert status != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    print(f"{fault}: {lines[0] if lines else '(killed: no line)'}")  # shown by pytest -rP
    if fault == "sigkill":
        assert lines == [], out
    else:
        assert len(lines) == 1 and lines[0].startswith(f"error: {stage}: "), out
        assert SAYS[fault] in lines[0], lines[0]
    left = [str(f.relative_to(project.path)) for f in outputs(project, stage) if f.exists()]
    assert left == [], f"outputs of a failed run: {left}"
    parts = [str(f) for f in project.path.rglob("*.part") if ".dvc" not in f.parts]
    assert parts == [], parts
    new = [r for i, r in runs_by_id(project).items() if i not in before]
    # A failure before the run opens (bad inputs, an unwritable folder) leaves no run at all.
    assert {r.info.status for r in new} <= ({"RUNNING"} if fault == "sigkill" else {"FAILED"})

    project.run("dvc", "repro")
    if fault == "sigkill":
        # A SIGKILLed run is closed by the next stage that starts on this machine. DVC may not
        # start the killed one again: it restores outputs from its run cache where it can.
        project.run("dvc", "repro", "--single-item", "--force", "report")
    assert digests(project) == undisturbed
    assert [r.info.run_name for r in project.runs() if r.info.status == "RUNNING"] == []
    for killed in new if fault == "sigkill" else []:  # none if it died before opening one
        assert project.client.get_run(killed.info.run_id).data.tags["killed.reason"]
