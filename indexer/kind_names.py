"""The names of the index kinds, importable without faiss (the command line lists them as choices).

`kinds.py` and `patch_kinds.py` register one spec per name and refuse a spec whose name is not
listed here, so the lists and the registries can never disagree.
"""

KIND_NAMES = ("flat", "hnsw", "ivf", "ivfpq")
# Kinds of the patch index (`index --level patches`, patch_kinds.py): ids live in the lists, no IDMap2.
PATCH_KIND_NAMES = ("flat", "ivf", "ivfsq", "ivfpq")
