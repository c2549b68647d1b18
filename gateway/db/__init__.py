"""Database access: async engines, the shared SQLAlchemy metadata, and Alembic migrations.

SQLAlchemy is imported only here and in ``gateway.ledger``; other packages talk to the database
through the small, typed functions and classes these modules export.
"""
