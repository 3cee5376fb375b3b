"""The gateway: OpenAI-compatible API in each mixer, its scheduler and canaries."""
