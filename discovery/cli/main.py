"""Entry point of the `disco` command: assembles the sub-apps and turns user errors into one
line on stderr with exit code 1 (2 for usage errors), never a traceback."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch litellm's price map

import typer  # noqa: E402

from discovery.cli import data_cmd, eval_cmd, inspect_cmd, kb_cmd, run_cmd, setup_cmd  # noqa: E402
from discovery.errors import UserError  # noqa: E402

app = typer.Typer(
    name="disco",
    help="ArchDisco: autonomous architecture discovery campaigns.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("init")(setup_cmd.init_command)
app.command("tasks")(setup_cmd.tasks_command)
app.command("run")(run_cmd.run_command)
app.command("status")(inspect_cmd.status_command)
app.command("top")(inspect_cmd.top_command)
app.command("show")(inspect_cmd.show_command)
app.command("eval")(eval_cmd.eval_command)
app.command("query")(data_cmd.query_command)
app.command("export")(data_cmd.export_command)
app.command("llm-calls")(inspect_cmd.llm_calls_command)
app.add_typer(kb_cmd.app, name="kb")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
