"""The paper's protocol around training: ``sweep`` (seeds x methods x configs as resumable runs), ``report``
(aggregation, statistics, tables and plots beside the paper's numbers), ``paper`` (the paper's result and
hyperparameter tables as data) and ``stats`` (Welch's t-test and TOST).

Import the subpackages themselves (``from kasa_lightning.experiments import sweep``); nothing is loaded here.
"""

__all__ = ["paper", "report", "stats", "sweep"]
