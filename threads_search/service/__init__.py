"""`threads-search serve`: the retrieval service and the case-review page (SPEC §11)."""
