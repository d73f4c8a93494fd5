"""The Python SDK: :class:`~interlock.Client` and :class:`~interlock.AsyncClient` for a remote
Interlock, and :func:`~interlock.governed` for functions whose calls go through Interlock.

Import from :mod:`interlock`; these modules are the implementation and import nothing here.
"""
