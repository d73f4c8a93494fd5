"""Interlock's tools for the OpenAI Agents SDK (``pip install 'interlock[openai-agents]'``).

See :mod:`interlock._internal.integrations.openai_agents` and ``docs/integrations.md``.
"""

from interlock._internal.integrations.openai_agents import INSTALL_HINT, interlock_tools, wait_for_approvals

__all__ = ["INSTALL_HINT", "interlock_tools", "wait_for_approvals"]
