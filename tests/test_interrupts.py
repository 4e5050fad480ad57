"""A stop (SIGINT, SIGTERM) that arrives while a checkpoint is written waits for the write to end.

Raised inside torch.save, it could come out of the C++ zip writer as a RuntimeError and end the
stage as a bug with a FAILED run, instead of as an interruption with a KILLED one.
"""

import collections
import os
import signal

import pytest
import torch

from pipeline import interrupts
from pipeline.checkpoint import Checkpoint


class StopWhilePickled:
    """Sends this process SIGTERM from inside torch.save, then pickles as an empty OrderedDict."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return (collections.OrderedDict, ())


@pytest.fixture
def stage_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_stop_in_a_checkpoint_write_comes_once_the_file_is_whole(tmp_path, stage_handlers):
    checkpoint = Checkpoint(tmp_path, "ce", "key")
    weights = torch.arange(300_000, dtype=torch.float32)
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        checkpoint.save({"weights": weights, "marker": StopWhilePickled(), "epoch": 3})
    state = checkpoint.load()
    assert state is not None and state["epoch"] == 3 and torch.equal(state["weights"], weights)
    assert [p.name for p in tmp_path.iterdir()] == ["ce-key.pt"]  # no temporary file left


def test_a_stop_outside_a_write_is_raised_at_once(stage_handlers):
    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, within a few
            pass
        pytest.fail("the stop was not raised")


def test_deferred_blocks_nest_and_a_stop_waits_for_the_outermost(stage_handlers):
    ended = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
            ended.append("inner")
        ended.append("not reached")
    assert ended == ["inner"]
    with interrupts.deferred():  # the held stop was consumed: a new block starts clean
        pass
