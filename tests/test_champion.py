"""When the champion alias moves: only up, only on the same data, and a line that says why."""

import pytest

from pipeline.champion import Standing, decide, evaluation_data, standing, version_tags

DATA = evaluation_data("a" * 32, None, 0)


def test_the_first_challenger_becomes_the_champion():
    move, line = decide(Standing("1", 0.69, DATA), None, "test_accuracy", "cifar10-student")
    assert move and line == "champion is cifar10-student v1 (test_accuracy 69.00 %): the first"


def test_a_worse_challenger_leaves_the_champion():
    move, line = decide(
        Standing("7", 0.689, DATA), Standing("3", 0.694, DATA), "test_accuracy", "m"
    )
    assert not move
    assert line == "champion stays m v3 (test_accuracy 69.40 %); challenger v7 has 68.90 %"


def test_an_equal_challenger_leaves_the_champion():
    move, _ = decide(Standing("7", 0.694, DATA), Standing("3", 0.694, DATA), "test_accuracy", "m")
    assert not move


def test_a_better_challenger_on_the_same_data_moves_it():
    move, line = decide(Standing("7", 0.70, DATA), Standing("3", 0.694, DATA), "test_accuracy", "m")
    assert move and line == "champion moves to m v7 (test_accuracy 70.00 %), up from v3"


@pytest.mark.parametrize(("challenger", "moves"), [(0.03, True), (0.05, False)])
def test_lower_wins_for_ece_and_kl(challenger, moves):
    move, _ = decide(Standing("2", challenger, DATA), Standing("1", 0.04, DATA), "ece", "m")
    assert move is moves


def test_other_data_never_moves_it_and_says_how_to_promote_by_hand():
    other = evaluation_data("b" * 32, 500, 0)
    move, line = decide(Standing("7", 0.99, other), Standing("3", 0.5, DATA), "test_accuracy", "m")
    assert not move
    assert "it was measured on other data" in line and "test_size 500" in line
    assert line.endswith("to promote the challenger anyway: python -m pipeline.promote 7")


def test_a_champion_without_the_figure_stays_and_says_so():
    move, line = decide(Standing("7", 0.7, DATA), Standing("3", None, DATA), "teacher_kl", "m")
    assert not move and "it has no teacher_kl to compare with" in line


def test_the_same_version_stays_the_champion():
    move, line = decide(Standing("3", 0.7, DATA), Standing("3", 0.7, DATA), "test_accuracy", "m")
    assert not move and "it is this report's best student too" in line


def test_a_standing_reads_back_the_tags_the_report_writes():
    tags = {"role": "kd-42", **version_tags(0.6875, "test_accuracy", DATA)}
    assert standing("4", tags, "test_accuracy") == Standing("4", 0.6875, DATA)
    assert standing("4", tags, "ece") == Standing("4", None, DATA)
