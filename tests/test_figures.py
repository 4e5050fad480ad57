"""The report's training curves: like compared with like, each method's own loss apart, and
epochs as whole numbers."""

from pipeline import figures
from pipeline.report import curve_tables


def history(epochs: int, **terms: float) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 2.0 / e, "train_ce": 1.5 / e, "train_accuracy": 0.1 * e,
             "test_accuracy": 0.09 * e, **{f"train_{k}": v / e for k, v in terms.items()}}
            for e in range(1, epochs + 1)]  # fmt: skip


CURVES = {"teacher": history(5), "ce": history(5), "kd": history(5, kd=0.5),
          "regressor": history(5, hint=3.0)}  # fmt: skip


def test_the_first_row_overlays_every_model_on_one_quantity_each():
    fig = figures.curves(CURVES)
    shared = fig.axes[:3]
    assert [ax.get_ylabel() for ax in shared] == ["training cross-entropy",
                                                  "training accuracy (%)", "test accuracy (%)"]  # fmt: skip
    for ax in shared:
        assert [line.get_label() for line in ax.get_lines()] == list(CURVES)
    figures.close(fig)


def test_each_method_that_adds_to_cross_entropy_has_a_panel_of_its_own():
    fig = figures.curves(CURVES)
    own = [ax for ax in fig.axes[3:] if ax.get_visible()]
    assert [ax.get_ylabel() for ax in own] == ["kd: training loss", "regressor: training loss"]
    assert [line.get_label() for line in own[1].get_lines()] == ["total", "hint"]
    figures.close(fig)


def test_epoch_ticks_are_whole_numbers():
    fig = figures.curves({"ce": history(3)})
    fig.canvas.draw()
    for ax in fig.axes[:3]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    figures.close(fig)


def test_dvcs_curve_tables_hold_one_row_per_model_and_epoch():
    tables = curve_tables(CURVES)
    assert set(tables) == {"train_ce", "train_accuracy", "monitored_accuracy"}
    rows = tables["monitored_accuracy"]
    assert len(rows) == 4 * 5 and rows[0] == {"epoch": 1, "model": "teacher",
                                              "monitored_accuracy": 0.09}  # fmt: skip
    validated = curve_tables({"ce": [{"epoch": 1, "train_ce": 1.0, "train_accuracy": 0.5,
                                      "val_accuracy": 0.4}]})  # fmt: skip
    assert validated["monitored_accuracy"][0]["monitored_accuracy"] == 0.4
