"""Persistent state: SQLAlchemy 2 typed models, engines, sessions, Alembic migrations."""
