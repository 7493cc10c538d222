"""APro's propagation primitives under the names ``../shared/CONTRACT.md`` fixes (``stages.apro.global_propagation``,
``stages.apro.local_propagation``). They live with the rest of the method in ``models/apro.py`` (GP: Eq. 3–4 over the
minimum spanning tree, compiled; LP: Eq. 5–6 over k×k windows); this module names them for scripts written against
the contract.

>>> import numpy as np
>>> global_propagation(np.array([[[0.], [0.], [10.]]]), np.array([[[1., 0., 0.]]]), 1.0).round(3).tolist()
[[[0.5, 0.5, 0.0]]]
"""
from models.apro import global_propagation, local_propagation

__all__ = ["global_propagation", "local_propagation"]
