"""The atlas store: the one owner of its SQL, schema and on-disk paths."""
