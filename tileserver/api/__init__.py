"""HTTP API: FastAPI routers, one per resource, and their shared dependencies."""
