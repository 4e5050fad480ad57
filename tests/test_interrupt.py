"""Interrupted training resumes: real `dvc repro`, real signals, the real MLflow store.

A stage is stopped in the middle of training by SIGINT (Ctrl-C reaches the whole foreground process
group), SIGTERM (CI, schedulers, DVC) or SIGKILL (the OOM killer): its run must not stay RUNNING,
and rerunning must resume from the last complete epoch and end with the weights, metrics and curves
of an uninterrupted run.
"""

import hashlib
import os
import signal
import subprocess
import time

import pytest
import torch
from project import Project, copy_project

pytestmark = pytest.mark.slow

EPOCHS = 20  # long enough that a signal sent after the first checkpoint lands mid-training
OUTPUTS = {
    "train_teacher@42": ["models/teachers/teacher-42.safetensors", "reports/train/teacher-42.json",
                         "plots/train/teacher-42.json"],
    "distill@regressor-42": ["models/students/regressor-42.safetensors",
                             "reports/train/regressor-42.json", "plots/train/regressor-42.json"],
}  # fmt: skip


def digests(project: Project, stage: str) -> dict[str, str]:
    return {
        name: hashlib.md5((project.path / name).read_bytes()).hexdigest() for name in OUTPUTS[stage]
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    # A validation split too: the best epoch's weights must survive the interruption as well.
    return copy_project(tmp_path_factory.mktemp("project"),
                        tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz",
                        teacher__epochs=EPOCHS, student__epochs=EPOCHS, train__batch_size=32,
                        data__val_size=40)  # fmt: skip


@pytest.fixture(scope="module")
def unbroken(project) -> dict[str, dict[str, str]]:
    """The outputs of each stage when nothing interrupts it."""
    project.run("dvc", "repro", "distill@regressor-42")
    return {stage: digests(project, stage) for stage in OUTPUTS}


def as_a_terminal_job() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def runs_of(project: Project, stage: str) -> list:
    return sorted(project.runs(**{"dvc.stage": stage}), key=lambda r: r.info.start_time)


@pytest.mark.parametrize(
    ("stage", "signum"),
    [
        ("train_teacher@42", signal.SIGINT),
        ("train_teacher@42", signal.SIGTERM),
        ("train_teacher@42", signal.SIGKILL),
        ("distill@regressor-42", signal.SIGKILL),  # a student: cached teacher outputs, a head
    ],
)
def test_a_stage_stopped_mid_training_resumes_to_the_same_result(project, unbroken, stage, signum):
    before = {r.info.run_id for r in runs_of(project, stage)}
    checkpoints = project.path / "checkpoints"
    # Started as a terminal starts a job: its own process group (the signal goes to DVC and the
    # stage together), default signal handling (whatever the test process inherited or set).
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=project.path,
                            env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=as_a_terminal_job)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*.pt")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        time.sleep(0.1)  # into the next epoch
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out
    (interrupted,) = [r for r in runs_of(project, stage) if r.info.run_id not in before]
    if signum == signal.SIGKILL:
        assert interrupted.info.status == "RUNNING"  # nothing could close it, yet
    else:
        assert "interrupted; rerun the stage to continue" in out
        assert interrupted.info.status == "KILLED"
    (saved,) = checkpoints.glob("*.pt")
    state = torch.load(saved, weights_only=True)
    assert 1 <= state["loop"]["epoch"] < EPOCHS and state["run_id"] == interrupted.info.run_id

    out = project.run("dvc", "repro", "--single-item", stage)  # what the user does next
    assert f"resuming after epoch {state['loop']['epoch']}/{EPOCHS}" in out
    assert digests(project, stage) == unbroken[stage]
    assert not list(checkpoints.glob("*.pt"))  # finished: nothing left to resume
    runs = {r.info.run_id: r for r in runs_of(project, stage)}
    resumed = runs_of(project, stage)[-1]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from.run_id"] == interrupted.info.run_id
    assert resumed.data.tags["resumed_from.epoch"] == str(state["loop"]["epoch"])
    previous = runs[interrupted.info.run_id]
    assert previous.info.status == "KILLED"  # SIGKILL too: closed by the rerun
    assert previous.data.tags["resumed_by.run_id"] == resumed.info.run_id
    # The resumed run's curves are whole: every epoch once.
    history = project.client.get_metric_history(resumed.info.run_id, "epoch/train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert "RUNNING" not in {r.info.status for r in runs.values()}
