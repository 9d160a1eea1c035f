"""Ingestion: files read by `readers` -> rows and files of the atlas."""
