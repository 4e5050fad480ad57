"""Fault injection into a real stage process, from outside the pipeline's code.

A test puts this folder on PYTHONPATH and sets PIPELINE_FAULT=<module>:<attribute>:<n>:<kind>.
Right after <module> is imported (by anything, so imports by name see the wrapper too), its
<attribute> (a function, or Class.method) is wrapped: its n-th call does <kind> instead:
  raise    RuntimeError("injected fault"), the kind of exception nobody anticipated
  oserror  OSError(EIO), a failing disk
  mlflow   MlflowException, a failing tracking store
  sigkill  SIGKILL to this process, as the OOM killer sends
Every other process that reads PYTHONPATH (DVC, say) is untouched unless it imports <module>.
"""

import errno
import importlib.abc
import importlib.util
import os
import signal
import sys

SPEC = os.environ.get("PIPELINE_FAULT", "")


def _fault(kind: str, where: str):
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oserror":
        return OSError(errno.EIO, f"injected fault in {where}")
    if kind == "mlflow":
        from mlflow.exceptions import MlflowException

        return MlflowException(f"injected fault in {where}: database is locked")
    return RuntimeError(f"injected fault in {where}")


def _wrap(module, attribute: str, nth: int, kind: str) -> None:
    *owner_path, name = attribute.split(".")
    owner = module
    for part in owner_path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth:
            raise _fault(kind, f"{module.__name__}.{attribute}")
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, attribute: str, nth: int, kind: str):
        self.target = (module, attribute, nth, kind)

    def find_spec(self, name, path, target=None):
        if name != self.target[0]:
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap(module, *self.target[1:])

        spec.loader.exec_module = exec_module
        return spec


if SPEC:
    _module, _attribute, _nth, _kind = SPEC.split(":")
    sys.meta_path.insert(0, _AfterImport(_module, _attribute, int(_nth), _kind))
