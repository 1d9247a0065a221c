"""Tasks: one module per task (``relaxbench.tasks.NAME`` defines ``TASK``); see :mod:`relaxbench.registry`."""
