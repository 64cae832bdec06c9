"""A data set's fingerprint (``segpipe inspect``): what its images and labels are like, measured once.

:mod:`.measure` measures one image and folds the records; :mod:`.run` reads the shards on Ray Data.
"""

from pipeline.fingerprint.measure import FingerprintTotals, image_fingerprint
from pipeline.fingerprint.run import Fingerprint, inspect_data, measure_data

__all__ = ["Fingerprint", "FingerprintTotals", "image_fingerprint", "inspect_data", "measure_data"]
