"""threads-search: slides and molecular profiles in one embedding space, searched with FAISS.

Heavy modules (torch, faiss, duckdb) are imported where they are used, so that
`import threads_search` and `threads-search --help` stay fast.
"""

__version__ = "0.1.0"
