"""The knowledge base: everything a campaign learns, in SQL (DESIGN.md section 7).

``db`` opens and migrates a database (SQLite by default, PostgreSQL by URL) and hands out
sessions; ``models`` is the schema; ``repository`` holds every read and write (functions that
take a Session and never commit); ``query`` runs read-only SQL for ``disco query``; ``export``
writes CSV / JSONL / Parquet; ``novelty`` hashes and compares candidate code. Only this package
imports SQLAlchemy.
"""
