"""ASGI entry point for uvicorn workers: `tileserver.main:app`, configured from the environment."""

from tileserver.app import create_app

app = create_app()
