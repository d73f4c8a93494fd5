"""The operator console under ``/ui``: server-rendered pages and plain forms (see :mod:`.routes`)."""
