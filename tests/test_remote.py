"""A team shares its DVC cache through a remote: after `git commit` and `dvc push` in one clone, a
fresh clone runs `dvc pull` and then `dvc repro`, and the repro runs nothing; the trained teacher
and students come from the remote, the metrics and reports (DVC outputs with `cache: false`) from
git. Real DVC, a local-directory remote (an S3 bucket works the same way).
"""

import pytest
import yaml
from project import Project, copy_project

from pipeline import files

pytestmark = pytest.mark.slow


def test_a_fresh_clone_pulls_the_trained_models_and_repro_runs_nothing(tmp_path_factory):
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    trainer = copy_project(tmp_path_factory.mktemp("trainer"), archive,
                           teacher__epochs=1, student__epochs=1)  # fmt: skip
    remote = tmp_path_factory.mktemp("remote")
    assert "Running stage 'train_teacher@42'" in trainer.run("dvc", "repro")
    trainer.run("dvc", "remote", "add", "--default", "shared", str(remote))
    # what git versions (the lock, the remote, the .gitignore files DVC wrote beside its outputs,
    # the small uncached outputs: metrics, reports, curves), then what the remote holds (data and
    # models, from DVC's cache)
    trainer.run("git", "add", "--all")
    trainer.run("git", "commit", "-qm", "trained; the team's remote")
    trainer.run("dvc", "push")

    clone = tmp_path_factory.mktemp("teammate") / "clone"
    trainer.run("git", "clone", "-q", str(trainer.path), str(clone))
    teammate = Project(clone)
    outputs = _outputs(teammate)
    # the data, the teacher, its cached outputs and the four students
    trained = [path for path in outputs if path.endswith(".safetensors")]
    assert len(trained) == 7 and not any((teammate.path / path).exists() for path in trained)
    teammate.run("dvc", "pull")

    assert {path: files.md5((teammate.path / path).read_bytes()) for path in outputs} == outputs
    assert teammate.repro() == []
    assert "up to date" in teammate.run("dvc", "status")


def _outputs(project: Project) -> dict[str, str]:
    """Every file output that dvc.lock records, with its MD5 (folders are left out)."""
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in lock.values() for out in stage.get("outs", [])
            if not out["md5"].endswith(".dir")}  # fmt: skip
