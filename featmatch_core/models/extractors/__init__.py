"""Feature extractors. Import a class through :func:`featmatch_core.models.get_model`."""
