"""A module that fails as it is imported, as a module with a bug does."""

raise RuntimeError("this module fails at import")
