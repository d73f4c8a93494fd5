"""Interlock inside agent frameworks. Each one is an optional extra, imported only when used:

- :mod:`interlock.integrations.openai_agents` — OpenAI Agents SDK (``pip install 'interlock[openai-agents]'``)
- :mod:`interlock.integrations.langchain` — LangChain and LangGraph (``pip install 'interlock[langchain]'``)

Any MCP client needs no integration: point it at the server's ``/mcp`` with an agent token.
"""
