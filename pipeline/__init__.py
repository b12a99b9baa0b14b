"""biopriv processing core: frames, windows, features and local differential privacy.

Nothing in this package imports Kafka or Faust except :mod:`pipeline.app` (the stream-worker
shell) and :mod:`pipeline.cli`; the rest takes decoded frames and returns releases.
"""

__version__ = "0.1.0"
