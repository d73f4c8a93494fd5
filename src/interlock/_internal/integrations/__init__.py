"""Framework integrations (optional extras); import them from :mod:`interlock.integrations`."""
