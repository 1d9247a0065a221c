"""The static HTML report of a config's results: figures (:mod:`.figures`) and pages (:mod:`.site`)."""

from relaxbench.report.site import build_report

__all__ = ["build_report"]
