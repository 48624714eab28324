"""The ground floor: record types, the dead-letter envelope and the accounting counters.

Imports nothing of headwater (``make lint`` checks it): every other package builds on it.
"""
