from pathlib import Path

from pipeline import provenance


def test_project_root_of_a_dvc_experiment_copy_is_the_original_checkout():
    copy = Path("/home/me/project/.dvc/tmp/exps/tmpab12cd/pipeline")
    assert provenance.project_root(copy) == Path("/home/me/project")
    assert provenance.project_root(Path("/home/me/project")) == Path("/home/me/project")


def test_invocation_key_follows_inputs_not_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "x.py").write_text("x = 1\n")
    key = provenance.invocation_key()
    (tmp_path / "metrics.json").write_text("{}")  # an output appears: same invocation
    assert provenance.invocation_key() == key
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert provenance.invocation_key() != key
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-pole")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    assert provenance.invocation_key() != key
