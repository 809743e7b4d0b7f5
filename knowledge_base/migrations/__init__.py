"""Alembic migrations of the knowledge base, shipped as package data and applied on open.

``knowledge_base.db.migrate`` runs them programmatically; ``env.py`` is Alembic's entry point.
To write a new revision during development (no alembic.ini needed)::

    from alembic import command
    from knowledge_base.db import alembic_config
    command.revision(alembic_config("sqlite:///dev.db"), autogenerate=True, message="...")

then review the generated file (autogenerate cannot see the full-text objects; write their
dialect branches by hand, as ``versions/0001_initial.py`` does).
"""
