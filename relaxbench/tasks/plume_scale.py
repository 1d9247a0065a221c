"""Smoke plumes under scaling: the task ``plume`` with ``symmetry: scale`` (the published scale set).

A config names each task once, so the scale experiment has its own name beside ``plume`` (whose default is the
rotation experiment); everything else, parameters included, is :mod:`relaxbench.tasks.plume`'s.
"""

from __future__ import annotations

from relaxbench.tasks.base import TaskError
from relaxbench.tasks.plume import Plume

__all__ = ["PlumeScale", "TASK"]


class PlumeScale(Plume):
    name = "plume_scale"
    defaults = {**Plume.defaults, "symmetry": "scale"}

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        if self.params["symmetry"] != "scale":
            raise TaskError(
                "task 'plume_scale' is the scale experiment; use task 'plume' for symmetry: rotation"
            )


TASK = PlumeScale
