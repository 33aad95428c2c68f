"""Cold start: the cyclic garbage collector rests while a handler's modules load.

A handler's import allocates a few hundred thousand objects that live as long as the process (botocore,
pydantic, Powertools, the domain's classes and models). The collector's passes over them during the import
find nothing to free; they cost ~4% of a cold import (measured by bench/bench_coldstart.py). Every handler
imports this module first among the layer's modules (`from annex import coldstart`: the import sorter
keeps it first), which pauses the collector, and calls `loaded()` after its last import: the collector
resumes, and what was loaded is frozen out of later collections (`gc.freeze`), so the invocations'
collections do not scan it again either. Python's documentation recommends the same for a process that
loads long-lived state once (gc.freeze).
"""

from __future__ import annotations

import gc

_ENABLED_BEFORE = gc.isenabled()
gc.disable()


def loaded() -> None:
    """The handler's imports are done: freeze what they loaded and give the collector back."""
    gc.freeze()
    if _ENABLED_BEFORE:
        gc.enable()
