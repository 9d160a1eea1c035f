"""`threads-search demo`: the whole pipeline on a generated cohort."""
