"""Alembic migrations of the metalic store (``metalic db upgrade`` applies them)."""
