"""Alembic migrations of the knowledge base, shipped as package data and applied on open.

``knowledge_base.db.migrate`` runs them programmatically; ``env.py`` is Alembic's entry point.
To write a new revision during development, point Alembic at this folder, e.g.
``alembic -x url=sqlite:///dev.db -c /dev/null revision --autogenerate`` with
``script_location`` set to ``knowledge_base/migrations``, then review the generated file.
"""
