import pytest

from pipeline.params import DataParams, NormalizeParams, ParamsError, TrainParams, load, parse

GOOD_TRAIN = {"epochs": 10, "batch_size": 128, "lr": 0.001, "seed": 42}


def test_committed_params_yaml_parses():
    data = load("data", DataParams)
    assert data.md5 == "c58f30108f718f92721af3b95e74349a"  # the official archive's
    assert load("normalize", NormalizeParams).std == (0.229, 0.224, 0.225)


def test_defaults_and_int_to_float():
    p = parse(TrainParams, {**GOOD_TRAIN, "lr": 1}, "train")
    assert p.lr == 1.0 and isinstance(p.lr, float) and p.device == "auto"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**GOOD_TRAIN, "epoch": 3}, r"train\.epoch: unknown key; allowed keys are epochs, "),
        ({k: v for k, v in GOOD_TRAIN.items() if k != "lr"}, r"train\.lr: missing"),
        ({**GOOD_TRAIN, "epochs": "10"}, r"train\.epochs = '10': expected int"),
        ({**GOOD_TRAIN, "epochs": True}, r"train\.epochs = True: expected int"),
        ({**GOOD_TRAIN, "epochs": 2.5}, r"train\.epochs = 2\.5: expected int"),
        ({**GOOD_TRAIN, "epochs": 0}, r"train\.epochs = 0: must be >= 1"),
        ({**GOOD_TRAIN, "batch_size": -1}, r"train\.batch_size = -1: must be >= 1"),
        ({**GOOD_TRAIN, "lr": 0}, r"train\.lr = 0\.0: must be > 0"),
        ([1, 2], r"train = \[1, 2\]: expected a mapping"),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_and_value(raw, message):
    with pytest.raises(ParamsError, match=message) as e:
        parse(TrainParams, raw, "train")
    assert "\n" not in str(e.value)


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


def test_missing_section_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: {url: u, md5: c58f30108f718f92721af3b95e74349a}\n")
    with pytest.raises(ParamsError, match="section 'train' is missing"):
        load("train", TrainParams, path)
