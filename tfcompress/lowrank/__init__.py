"""Low-rank factorization: a Dense or Conv2D layer replaced by two thinner ones (truncated SVD).

    >>> small = tfc.factorize(model, energy=0.9)    # a plain Keras model; fine-tune it with fit
    >>> print(small.factorization_report)
"""

from tfcompress.lowrank.factorization import FORMS, FactorizationReport, factorize

__all__ = ["factorize", "FactorizationReport", "FORMS"]
