"""Progress bars: on in a terminal, off in CI, where plain lines are printed instead."""

import io

from pipeline import progress


def test_ci_turns_bars_off_even_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    with progress.bar(total=3, file=Terminal()) as bar:
        assert not bar.disable  # a terminal gets a bar (with rate and ETA)
    monkeypatch.setenv("CI", "true")
    with progress.bar(total=3, file=Terminal()) as bar:
        assert bar.disable


def test_a_log_file_gets_no_bar(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with progress.bar(total=3, file=io.StringIO()) as bar:  # not a terminal
        assert bar.disable
