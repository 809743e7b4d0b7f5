"""`disco kb ingest PATH | --builtin` and `disco kb search TEXT`: the knowledge base of
papers and design principles that LLM researchers retrieve from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from discovery.cli.common import DbOption, JsonOption, console, print_json
from discovery.errors import UsageError, UserError

app = typer.Typer(help="Knowledge base of papers and design principles.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, rich_markup_mode=None)


def read_documents(path: Path) -> list[dict[str, str]]:
    """Papers from a .txt/.md file, a .jsonl file (title, abstract, body) or a directory of them."""
    if not path.exists():
        raise UserError(f"kb ingest: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"kb ingest: no .txt, .md or .jsonl files under {path}")
    docs: list[dict[str, str]] = []
    for f in files:
        if f.suffix not in (".txt", ".md", ".jsonl"):
            raise UserError(f"kb ingest: {f}: unsupported file type (use .txt, .md or .jsonl)")
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"kb ingest: {f}: not UTF-8 text") from None
        if f.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"kb ingest: {f}:{i}: invalid JSON ({err.msg})") from None
                if not isinstance(obj, dict) or not obj.get("title"):
                    raise UserError(f"kb ingest: {f}:{i}: each line needs a JSON object with a 'title'")
                docs.append({"title": str(obj["title"]), "abstract": str(obj.get("abstract", "")),
                             "body": str(obj.get("body", "")), "source": str(obj.get("source", f.name))})
        else:
            lines = text.strip().splitlines()
            title = (lines[0].lstrip("# ").strip() if lines else f.stem) or f.stem
            docs.append({"title": title, "abstract": "", "body": text, "source": f.name})
    return docs


@app.command("ingest")
def ingest_command(
    path: Annotated[Path | None, typer.Argument(help="A .txt/.md/.jsonl file or a directory.")] = None,
    builtin: Annotated[bool, typer.Option("--builtin", help="Load the built-in design-principle pack.")] = False,
    task: Annotated[str, typer.Option("--task", help="Task the entries are for.")] = "token-mixer",
    model: Annotated[str | None, typer.Option("--model", help="litellm model to extract principles with.")] = None,
    api_base: Annotated[str | None, typer.Option("--api-base", help="Base URL for --model.")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ingest papers (stored as text, or distilled into principles with --model)."""
    from discovery.session import open_db
    from knowledge_base import repository as repo

    if builtin == (path is not None):
        raise UsageError("kb ingest: give either PATH or --builtin")
    database = open_db(db)
    added = skipped = 0
    try:
        if builtin:
            from discovery.llm_setup import load_builtin_knowledge

            added, skipped = load_builtin_knowledge(database, task)
        else:
            docs = read_documents(path)  # type: ignore[arg-type]
            entries: list[dict[str, Any]] = []
            if model is not None:
                from discovery.llm_setup import extract_principles

                entries = extract_principles(database, docs, task, model, api_base)
            else:
                entries = [{"kind": "paper", "title": d["title"], "source": d["source"],
                            "body": "\n\n".join(x for x in (d["abstract"], d["body"]) if x)} for d in docs]
            with database.session() as s:
                for e in entries:
                    _, created = repo.add_knowledge(s, task=task, **e)
                    added += int(created)
                    skipped += int(not created)
    finally:
        database.close()
    if json_out:
        print_json({"added": added, "skipped_duplicates": skipped})
    else:
        console().print(f"added {added} knowledge entries ({skipped} already present)")


@app.command("search")
def search_command(
    text: Annotated[str, typer.Argument(help="Words to search for.")],
    n: Annotated[int, typer.Option("-n", "--n", help="Results.")] = 5,
    task: Annotated[str | None, typer.Option("--task", help="Restrict to a task's entries.")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Full-text search over papers and principles (SQLite FTS5 / PostgreSQL tsvector)."""
    from discovery.session import open_db
    from knowledge_base import repository as repo

    database = open_db(db)
    try:
        with database.read_session() as s:
            hits = [
                {"id": k.id, "kind": k.kind, "title": k.title, "source": k.source, "trigger": k.trigger,
                 "principle": k.principle, "hint": k.hint, "body": k.body[:500]}
                for k in repo.search_knowledge(s, text, limit=n, task=task)
            ]
    finally:
        database.close()
    if json_out:
        print_json(hits)
        return
    c = console()
    if not hits:
        c.print("no matches")
    for h in hits:
        c.print(f"[bold]#{h['id']} {h['title']}[/] ({h['kind']}; {h['source']})")
        for key in ("trigger", "principle", "hint"):
            if h[key]:
                c.print(f"  {key}: {h[key]}")
        if h["kind"] == "paper" and h["body"]:
            c.print(f"  {h['body'][:200]}")
