"""The names of the index kinds, importable without faiss (the command line lists them as choices).

`kinds.py` registers one spec per name and refuses a spec whose name is not listed here, so the
two can never disagree.
"""

KIND_NAMES = ("flat", "hnsw", "ivf", "ivfpq")
