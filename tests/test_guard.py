"""The guard every stage runs under: one line per failure, the traceback in a log or on request."""

import errno
import io
import os
import subprocess
import sys
import tempfile

import pytest
from conftest import ROOT

from pipeline.data import DataError
from pipeline.stages import _guard


def fail_with(error: BaseException):
    def body():
        raise error

    return body


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(_guard.VERBOSE_ENV, raising=False)
    return tmp_path


def guarded(body, verbose=False) -> tuple[int, str]:
    err = io.StringIO()
    return _guard.guarded("distill@kd-42", body, verbose, err), err.getvalue()


def test_success_prints_nothing(project_dir):
    assert guarded(lambda: None) == (0, "")


def test_a_user_error_is_its_own_message(project_dir):
    status, text = guarded(fail_with(DataError("data.url = 'x': not found; fix data.url")))
    assert (status, text) == (1, "error: distill@kd-42: data.url = 'x': not found; fix data.url\n")
    assert not (project_dir / "logs").exists()  # nothing to debug: the message says it all


def test_a_bug_names_its_type_and_the_log_with_the_traceback(project_dir):
    status, text = guarded(fail_with(KeyError("students")))
    (log,) = (project_dir / "logs").iterdir()
    assert status == 1 and text == (
        "error: distill@kd-42: unexpected KeyError: 'students'; this is a bug in the pipeline: "
        f"please report it with the traceback in {log} ({_guard.VERBOSE_ENV}=1 prints it here)\n"
    )
    assert log.name.endswith("-distill@kd-42.log")
    content = log.read_text()
    assert "stage: distill@kd-42" in content and "Traceback (most recent call last)" in content
    assert "KeyError: 'students'" in content


def test_verbose_prints_the_traceback_then_the_line(project_dir):
    status, text = guarded(fail_with(ZeroDivisionError("division by zero")), verbose=True)
    assert status == 1 and text.startswith("Traceback (most recent call last)")
    assert text.splitlines()[-1] == (
        "error: distill@kd-42: unexpected ZeroDivisionError: division by zero; this is a bug in "
        "the pipeline: please report it with the traceback above"
    )
    assert not (project_dir / "logs").exists()


def test_an_os_error_names_the_file(project_dir):
    error = OSError(errno.EIO, "Input/output error", "checkpoints/kd-42-ab.pt")
    status, text = guarded(fail_with(error))
    assert status == 1 and text.startswith(
        "error: distill@kd-42: checkpoints/kd-42-ab.pt: Input/output error (OSError); check that "
        "file and the disk it is on, then rerun; traceback in "
    )


def test_a_multi_line_message_stays_on_one_line(project_dir):
    _, text = guarded(fail_with(RuntimeError("Error(s) in loading state_dict:\n\tMissing key")))
    assert text.count("\n") == 1 and "state_dict: Missing key;" in text


def test_an_interrupt_says_how_to_continue(project_dir):
    status, text = guarded(fail_with(KeyboardInterrupt()))
    assert status == 130 and text.startswith("error: distill@kd-42: interrupted; rerun the stage")


def test_the_log_falls_back_to_the_temp_folder(project_dir):
    (project_dir / "logs").write_text("a file where the folder should be")
    log = _guard.write_log("evaluate", RuntimeError("x"))
    assert log.startswith(tempfile.gettempdir()) and os.path.isfile(log)
    os.unlink(log)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["kd", "42"], "", (["kd", "42"], False)),
        (["kd", "-v", "42"], "", (["kd", "42"], True)),
        (["--verbose"], "", ([], True)),
        ([], "1", ([], True)),
        ([], "0", ([], False)),
    ],
)
def test_verbose_switches(monkeypatch, argv, env, expected):
    monkeypatch.setenv(_guard.VERBOSE_ENV, env)
    assert _guard.split_verbose(argv) == expected


def test_stage_names_are_dvcs():
    assert _guard.stage_name("pipeline.stages.distill", ["kd", "42"]) == "distill@kd-42"
    assert _guard.stage_name("pipeline.stages.report", []) == "report"


def stage_process(tmp_path, *args, env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_broken_environment_is_one_line_too(tmp_path):
    # A package that cannot be imported, as in an environment that is not the project's.
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is broken here')")
    done = stage_process(tmp_path, "pipeline.stages.report")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "error: report: mlflow is broken here (ImportError); run the stage with the project's "
        "environment (scripts/setup makes it; scripts/dvc uses it), then rerun; traceback in "
    )
    assert "Traceback" not in done.stderr


def test_a_missing_params_file_is_one_line(tmp_path):
    done = stage_process(tmp_path, "pipeline.stages.train_teacher", "42")
    assert done.returncode == 1
    assert done.stderr == (
        f"error: train_teacher@42: params.yaml not found in {tmp_path}; run the stage from the "
        "project root, where params.yaml is\n"
    )


def test_verbose_flag_on_the_command_line_prints_the_traceback(tmp_path):
    done = stage_process(tmp_path, "pipeline.stages.train_teacher", "42", "-v")
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: train_teacher@42: params.yaml not found")


def test_ctrl_c_while_the_libraries_import_is_one_line(tmp_path):
    # As if Ctrl-C came during the seconds torch and MLflow take to import.
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "__init__.py").write_text("raise KeyboardInterrupt")
    done = stage_process(tmp_path, "pipeline.stages.report")
    assert done.returncode == 130  # as for an interrupt after the imports
    assert done.stderr == (
        "error: report: interrupted; rerun the stage to continue (a training stage resumes after "
        "its last complete epoch)\n"
    )
