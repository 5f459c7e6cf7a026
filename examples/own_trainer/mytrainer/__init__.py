"""A researcher's own training code, run as a grokscale study (see study.yaml)."""
