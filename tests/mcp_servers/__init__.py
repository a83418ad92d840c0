"""Small MCP servers started by the tests, over stdio or streamable HTTP."""
