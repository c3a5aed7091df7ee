"""memos.agents: LangGraph agents and workflows over memos syscalls (langgraph is imported only in here)."""
