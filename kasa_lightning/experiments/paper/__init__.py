"""The paper's tables as data: ``results`` (Tables 1-3 and the ablations, ``lookup``) and ``hyperparameters``
(Tables 6-10), read from the JSON files beside them."""

__all__ = ["hyperparameters", "results"]
