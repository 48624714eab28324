"""Developer tools: sample workloads, producers, the plain-Python reference, bench, demo.

Not part of what users' pipelines or tests import (that is :mod:`headwater.testing`).
"""
