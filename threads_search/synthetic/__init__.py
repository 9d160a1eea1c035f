"""Seeded semi-synthetic paired cohorts in the public formats of SPEC §3."""
