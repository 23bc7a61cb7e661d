"""draftalign: train draft models for speculative decoding, aligned to chat LLMs.

Modules (one concept each): ``models`` (target loading, draft building), ``sampling``
(the accept/reject step), ``speculative`` (decoding engines), ``metrics`` (tau, speed-up),
``timing`` (honest wall-clock measurements), ``display`` (block-by-block views),
``profiles`` (sizes of the ci / cpu / gpu book), ``book`` (the chapter runner).
"""

__version__ = "0.1.0"
