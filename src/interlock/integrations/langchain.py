"""Interlock's tools for LangChain and LangGraph (``pip install 'interlock[langchain]'``).

See :mod:`interlock._internal.integrations.langchain` and ``docs/integrations.md``.
"""

from interlock._internal.integrations.langchain import (
    APPROVAL_INTERRUPT,
    INSTALL_HINT,
    interlock_langchain_tools,
)

__all__ = ["APPROVAL_INTERRUPT", "INSTALL_HINT", "interlock_langchain_tools"]
