"""Thin DVC stage entry points: `python -m pipeline.stages.<name>`. Each reads its params section,
calls the library, writes its declared outputs and (from the tracking module) logs."""
