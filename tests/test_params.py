import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cifar_archive import make_archive
from conftest import ROOT, committed
from mlflow.tracking import MlflowClient
from project import write_params

from pipeline import data
from pipeline.params import (
    DataParams,
    EvaluateParams,
    NormalizeParams,
    ParamsError,
    RegistryParams,
    RoleParams,
    TeacherParams,
    TrainParams,
    load_all,
    parse,
    parse_variants,
)

GOOD_TRAIN = {"batch_size": 128, "lr": 0.001}


@pytest.fixture
def committed_params(tmp_path):
    """params.yaml as committed: a user's experiment (and .ci/run's) changes the workspace's."""
    (tmp_path / "params.yaml").write_text(committed("params.yaml"))
    return load_all(tmp_path / "params.yaml")


def test_committed_params_reproduce_the_tutorial(committed_params):
    p = committed_params
    assert p.data.md5 == "c58f30108f718f92721af3b95e74349a"  # the official archive's
    assert p.data.train_size is None and p.data.test_size is None
    assert p.normalize.mean == (0.485, 0.456, 0.406) and p.normalize.std == (0.229, 0.224, 0.225)
    assert (p.train.batch_size, p.train.lr, p.seeds, p.teacher.seeds) == (128, 0.001, (42,), (42,))
    assert p.data.val_size == 0  # the tutorial's protocol: no validation split
    assert p.teacher.epochs == 10 and p.student.epochs == 10
    # The tutorial's models, its data, and a teacher trained here.
    assert (p.teacher.model, p.teacher.args, p.teacher.code) == ("DeepNN", {}, "pipeline/models.py")
    assert (p.student.model, p.student.args, p.student.code) == (
        "LightNN",
        {},
        "pipeline/models.py",
    )
    assert p.teacher.weights is None
    assert p.data.source == "cifar10" and p.data.image_size is None
    assert list(p.variants) == ["ce", "kd", "cosine", "regressor"]
    assert p.variants["kd"].kwargs == {
        "temperature": 2.0,
        "distill_weight": 0.25,
        "ce_weight": 0.75,
        "standardize": False,  # the method's default, filled in
    }
    for name in ("cosine", "regressor"):  # on the conv stacks: DeepNN 32x8x8, LightNN 16x8x8
        assert p.variants[name].kwargs == {
            "distill_weight": 0.25,
            "ce_weight": 0.75,
            "student_layer": "features",
            "teacher_layer": "features",
        }
    assert p.variants["ce"].kwargs == {}


def test_defaults_and_int_to_float():
    p = parse(TrainParams, {**GOOD_TRAIN, "lr": 1}, "train")
    assert p.lr == 1.0 and isinstance(p.lr, float) and p.device == "auto"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {**GOOD_TRAIN, "batchsize": 3},
            r"train\.batchsize: unknown key; allowed keys are batch_size, ",
        ),
        ({k: v for k, v in GOOD_TRAIN.items() if k != "lr"}, r"train\.lr: missing"),
        ({**GOOD_TRAIN, "batch_size": "42"}, r"train\.batch_size = '42': expected int"),
        ({**GOOD_TRAIN, "batch_size": True}, r"train\.batch_size = True: expected int"),
        ({**GOOD_TRAIN, "batch_size": 2.5}, r"train\.batch_size = 2\.5: expected int"),
        ({**GOOD_TRAIN, "batch_size": 0}, r"train\.batch_size = 0: must be from 1 to 2147483647"),
        ({**GOOD_TRAIN, "lr": 0}, r"train\.lr = 0\.0: must be > 0"),
        ({**GOOD_TRAIN, "processes": 0}, r"train\.processes = 0: must be from 1 to"),
        (
            {**GOOD_TRAIN, "batch_size": 2, "processes": 3},
            r"train\.processes = 3 is more than train\.batch_size = 2: every rank needs a part",
        ),
        (
            {**GOOD_TRAIN, "device": "cuda:0", "processes": 2},
            r"train\.device = 'cuda:0' names one device, but train\.processes = 2 gives each rank",
        ),
        ([1, 2], r"train = \[1, 2\]: expected a mapping"),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_and_value(raw, message):
    with pytest.raises(ParamsError, match=message) as e:
        parse(TrainParams, raw, "train")
    assert "\n" not in str(e.value)


def test_epochs_and_subset_sizes():
    with pytest.raises(ParamsError, match=r"teacher\.epochs = 0: must be from 1 to"):
        parse(RoleParams, {"epochs": 0}, "teacher")
    ok = parse(DataParams, {"url": "u", "md5": "c" * 32, "train_size": 500}, "data")
    assert ok.train_size == 500 and ok.test_size is None
    with pytest.raises(ParamsError, match=r"data\.test_size = 0: must be >= 1, or null"):
        parse(DataParams, {"url": "u", "md5": "c" * 32, "test_size": 0}, "data")


def test_tuple_fields_check_length_and_items():
    with pytest.raises(ParamsError, match=r"normalize\.mean = \[0\.5\]: expected a list of 3"):
        parse(NormalizeParams, {"mean": [0.5], "std": [1, 1, 1]}, "normalize")
    with pytest.raises(ParamsError, match=r"normalize\.std\[1\] = 'x': expected float"):
        parse(NormalizeParams, {"mean": [0, 0, 0], "std": [1, "x", 1]}, "normalize")
    with pytest.raises(ParamsError, match=r"normalize\.std = \[1\.0, 0\.0, 1\.0\]: every value"):
        parse(NormalizeParams, {"mean": [0, 0, 0], "std": [1, 0, 1]}, "normalize")


def test_md5_must_be_hex():
    with pytest.raises(ParamsError, match=r"data\.md5 = 'xyz': expected 32 hexadecimal digits"):
        parse(DataParams, {"url": "u", "md5": "xyz"}, "data")


def test_source_md5_and_image_size():
    ok = parse(DataParams, {"url": "u", "md5": "c" * 32}, "data")
    assert ok.source == "cifar10" and ok.image_size is None  # the defaults: the tutorial's data
    folder = parse(DataParams, {"url": "u", "md5": None, "source": "../x.tar.gz"}, "data")
    assert folder.md5 is None  # an image folder may go without an MD5
    resized = parse(DataParams, {"url": "u", "source": "imgs", "image_size": 8}, "data")
    assert resized.image_size == 8
    for raw, message in [
        ({"md5": None}, r"data\.md5 = null: the CIFAR-10 archive needs its MD5"),
        ({}, r"data\.md5 = null: the CIFAR-10 archive needs its MD5"),
        ({"source": "imgs", "md5": "xyz"}, r"data\.md5 = 'xyz': expected 32 hexadecimal digits"),
        ({"source": " "}, r"data\.source = ' ': expected cifar10, or the path of an image folder"),
        ({"source": "a\nb"}, r"data\.source = 'a\\nb': expected cifar10"),
        ({"source": 3}, r"data\.source = 3: expected str"),
        ({"md5": "c" * 32, "image_size": 7}, r"data\.image_size = 7: must be from 8 to 4096"),
        ({"source": "imgs", "image_size": 4097}, r"data\.image_size = 4097: must be from 8 to"),
        ({"source": "imgs", "image_size": 32.0}, r"data\.image_size = 32\.0: expected int"),
    ]:
        with pytest.raises(ParamsError, match=message) as e:
            parse(DataParams, {"url": "u", **raw}, "data")
        assert "\n" not in str(e.value)


def test_committed_params_read_the_cifar10_archive_at_its_size(committed_params):
    p = committed_params
    assert p.data.source == "cifar10" and p.data.image_size is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"at2": {"method": "at", "student_layers": ["features", "features"]}},
            r"variants\.at2\.student_layers has 2, variants\.at2\.teacher_layers has 1: the lists",
        ),
        (
            {"x": {"method": "fitnet"}},
            r"variants\.x\.method = 'fitnet': expected one of ce, kd, dkd, dist, cosine, regressor",
        ),
        (
            {"kd": {"method": "kd", "temperature": -1, "distill_weight": 1, "ce_weight": 1}},
            r"variants\.kd\.temperature = -1: must be > 0",
        ),
        ({"x": {"temperature": 2}}, r"variants\.x = .*: expected a mapping with a 'method'"),
        ({"a b": {"method": "ce"}}, r"variants\.a b: a name is 1 to 100 letters, digits"),
        (
            {"teacher": {"method": "ce"}},
            r"variants\.teacher: names starting 'teacher' are the teachers'",
        ),
        ({}, r"variants = \{\}: expected a mapping"),
    ],
)
def test_bad_variants_are_named(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_variants(raw)


def test_a_new_variant_is_just_an_entry():
    variants = parse_variants(
        {"kd_t4": {"method": "kd", "temperature": 4, "distill_weight": 0.5, "ce_weight": 0.5}}
    )
    assert variants["kd_t4"].method == "kd" and variants["kd_t4"].kwargs["temperature"] == 4


def test_feature_methods_tap_the_built_ins_conv_stacks_unless_told_otherwise():
    cosine = {"method": "cosine", "distill_weight": 0.5, "ce_weight": 0.5}
    filled = parse_variants({"cos": cosine})["cos"].kwargs
    assert (filled["student_layer"], filled["teacher_layer"]) == ("features", "features")
    named = parse_variants({"cos": {**cosine, "student_layer": "features.3"}})["cos"].kwargs
    assert (named["student_layer"], named["teacher_layer"]) == ("features.3", "features")
    resnet = parse(TeacherParams, {"epochs": 1, "model": "resnet18"}, "teacher")
    with pytest.raises(ParamsError) as e:
        parse_variants({"cos": cosine}, teacher=resnet)
    assert str(e.value) == ("variants.cos.teacher_layer: missing, and resnet18 has no default "
                            "layer; name the module to tap (e.g. layer3)")  # fmt: skip
    both = parse_variants({"cos": {**cosine, "teacher_layer": "layer3"}}, teacher=resnet)
    assert both["cos"].kwargs["teacher_layer"] == "layer3"
    with pytest.raises(ParamsError, match=r"variants\.cos\.student_layer = 3: expected a module"):
        parse_variants({"cos": {**cosine, "student_layer": 3}})
    assert "student_layer" not in parse_variants({"kd": {"method": "ce"}})["kd"].kwargs


def test_models_are_checked_before_any_training():
    resnet = parse(RoleParams, {"epochs": 1, "model": "resnet18", "args": {"dropout": 0}}, "x")
    assert resnet.args == {"dropout": 0} and resnet.code == "pipeline/models.py"  # unused for it
    for raw, message in [
        ({"model": "resnet19"}, r"student\.model = 'resnet19': not a built-in .* did you mean resnet18"),
        ({"model": "LightNN", "args": [1]}, r"student\.args = \[1\]: expected a mapping of names"),
        ({"code": "../models.py"}, r"student\.code = '\.\./models\.py': expected a file or folder"),
        ({"model": "pipeline.models:LightNN", "code": "tests"},
         r"student\.code = 'tests' does not hold student\.model 'pipeline\.models:LightNN' \(defined "
         r"in pipeline/models\.py\)"),
    ]:  # fmt: skip
        with pytest.raises(ParamsError, match=message) as e:
            parse(RoleParams, {"epochs": 1, **raw}, "student")
        assert "\n" not in str(e.value)
    with pytest.raises(ParamsError, match=r"teacher\.weights = 'nowhere\.pt': no such file"):
        parse(TeacherParams, {"epochs": 1, "weights": "nowhere.pt"}, "teacher")


def test_unknown_or_missing_sections_are_named(tmp_path):
    path = tmp_path / "params.yaml"
    doc = yaml.safe_load(Path("params.yaml").read_text())
    path.write_text(yaml.safe_dump({**doc, "trian": {}}))
    with pytest.raises(ParamsError, match="unknown section 'trian'"):
        load_all(path)
    del doc["teacher"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ParamsError, match="section 'teacher' is missing"):
        load_all(path)


def test_evaluate_and_registry_sections():
    assert parse(EvaluateParams, {}, "evaluate").latency_iters == 200
    with pytest.raises(ParamsError, match=r"evaluate\.latency_iters = 5: must be from 20"):
        parse(EvaluateParams, {"latency_iters": 5}, "evaluate")
    assert parse(RegistryParams, {}, "registry").select_by == "test_accuracy"
    with pytest.raises(ParamsError, match=r"registry\.select_by = 'acc': expected one of test_a"):
        parse(RegistryParams, {"select_by": "acc"}, "registry")


def test_seeds_lists_and_the_teacher_of_each_seed(tmp_path):
    doc = yaml.safe_load(Path("params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump({**doc, "seeds": [1, 2, 3], "teacher": {"epochs": 1, "seeds": [2, 9]}})
    )
    p = load_all(path)
    assert p.seeds == (1, 2, 3)
    assert [p.teacher_seed(s) for s in p.seeds] == [2, 2, 2]
    assert p.teacher_seed(2) == 2 and p.teacher_seed(1) == 2  # its own, else the first listed
    for bad, message in [([], r"seeds = \[\]: list at least one seed"),
                         ([1, 1], r"seeds = \[1, 1\]: seeds must be distinct"),
                         ("42", r"seeds = '42': expected a list"),
                         ([1.5], r"seeds\[0\] = 1\.5: expected int")]:  # fmt: skip
        path.write_text(yaml.safe_dump({**doc, "seeds": bad}))
        with pytest.raises(ParamsError, match=message):
            load_all(path)
    with pytest.raises(ParamsError, match=r"teacher\.seeds = \[\]"):
        parse(TeacherParams, {"epochs": 1, "seeds": []}, "teacher")


def test_validation_size_must_leave_training_images():
    with pytest.raises(ParamsError, match=r"data\.val_size = -1: must be >= 0"):
        parse(DataParams, {"url": "u", "md5": "c" * 32, "val_size": -1}, "data")
    with pytest.raises(ParamsError, match=r"data\.val_size = 500: must be smaller than train_size"):
        parse(DataParams, {"url": "u", "md5": "c" * 32, "train_size": 500, "val_size": 500}, "data")


# (stage and its arguments, params.yaml changes as key path -> value, what the line must say)
STAGE_FAULTS = [
    ("train_teacher 42", {"train.batchsize": 64}, "train.batchsize: unknown key; allowed keys"),
    ("train_teacher 42", {"train.lr": "fast"}, "train.lr = 'fast': expected float"),
    ("train_teacher 42", {"teacher.epochs": 0}, "teacher.epochs = 0: must be from 1 to 2147483647"),
    ("train_teacher 42", {"train.batch_size": 0}, "train.batch_size = 0: must be from 1 to"),
    ("train_teacher 42", {"train.lr": -0.1}, "train.lr = -0.1: must be > 0"),
    ("distill kd 42", {"variants.kd.temperature": 0}, "variants.kd.temperature = 0: must be > 0"),
    ("distill cosine 42", {"variants.cosine.ce_weight": -0.5},
     "variants.cosine.ce_weight = -0.5: must be >= 0"),
    ("distill regressor 42", {"variants.regressor.distill_weight": 0,
                              "variants.regressor.ce_weight": 0},
     "variants.regressor.distill_weight = 0, variants.regressor.ce_weight = 0: at least one"),
    ("distill kd 42", {"variants.kd.method": "fitnet"},
     "variants.kd.method = 'fitnet': expected one of ce, kd, dkd, dist, cosine, regressor, fitnets"),
    ("distill kd_t4 42", {}, "unknown variant 'kd_t4'; params.yaml has: ce, kd, cosine, regressor"),
    ("distill kd 7", {}, "seed '7' is not in seeds = [42]"),
    ("train_teacher 42", {"data.train_size": 100000},
     "data.train_size = 100000: larger than the 200 images there are"),
    ("teacher_outputs 42", {"data.train_size": 100000},
     "data.train_size = 100000: larger than the 200 images there are"),
    ("evaluate", {"data.test_size": 41}, "data.test_size = 41: larger than the 40 images"),
]  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """data/cifar10.safetensors of a tiny archive: 200 training and 40 test images."""
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    make_archive(archive, per_batch=40)
    path = tmp_path_factory.mktemp("converted") / "cifar10.safetensors"
    data.save(data.read_archive(archive), path)
    return path


@pytest.mark.parametrize(("command", "changes", "message"), STAGE_FAULTS)
def test_a_bad_param_stops_the_stage_before_any_run(tmp_path, converted, command, changes, message):
    write_params(tmp_path / "params.yaml", changes)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar10.safetensors").symlink_to(converted)
    module, *args = command.split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded store: tmp_path/mlflow.db
    done = subprocess.run([sys.executable, "-m", f"pipeline.stages.{module}", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    stage = f"{module}@{'-'.join(args)}" if args else module
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {stage}: {message}"), done.stderr
    # A mistake in params.yaml stops the stage before it opens the tracking store; one found in
    # the stage's arguments or inputs, after the store was checked, but before any run.
    if (tmp_path / "mlflow.db").exists():
        assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["0"]) == []
    written = {p.name for p in tmp_path.iterdir()} - {"data", "params.yaml"}
    assert written <= {"mlflow.db", "mlflow.db.lock"}, written


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "expected auto, cpu, cuda, cuda:<index> or mps"),
        ("cuda:x", "expected auto, cpu, cuda, cuda:<index> or mps"),
        ("cuda:\u00b2", "expected auto, cpu, cuda, cuda:<index> or mps"),  # a digit, not ASCII
        ("cuda:99", "this machine has"),
    ],
)
def test_the_device_must_be_one_this_machine_has(device, message):
    with pytest.raises(ParamsError, match=rf"train\.device = '{device}': {message}"):
        parse(TrainParams, {**GOOD_TRAIN, "device": device}, "train")
