import torch

from pipeline import models


def test_parameter_counts_match_the_tutorial():
    assert models.count_parameters(models.DeepNN()) == 1_186_986
    assert models.count_parameters(models.LightNN()) == 267_738


def test_forward_returns_logits_and_the_conv_feature_map():
    x = torch.randn(4, 3, 32, 32)
    teacher, student = models.DeepNN()(x), models.LightNN()(x)
    assert teacher.logits.shape == (4, 10) and teacher.features.shape == (4, 32, 8, 8)
    assert student.logits.shape == (4, 10) and student.features.shape == (4, 16, 8, 8)


def test_regressor_head_maps_student_features_to_teacher_shape_and_is_not_in_the_student():
    head = models.regressor_head()
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    student = models.LightNN()
    assert models.count_parameters(student) == 267_738  # deployable student has no head


def test_build_is_seeded():
    a, b = models.build("LightNN", 7), models.build("LightNN", 7)
    c = models.build("LightNN", 8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
