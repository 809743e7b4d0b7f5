"""Building tasks for the CLI and the loop, with user-facing errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from discovery.config import config_error_line
from discovery.errors import UserError
from evaluator.registry import UnknownTaskError, get_task, get_task_factory
from evaluator.types import Task


def build_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    try:
        return get_task(name, options)
    except UnknownTaskError as err:
        raise UserError(f"task: {err}") from None
    except ValidationError as err:
        model = getattr(get_task_factory(name), "options_model", None)
        raise UserError(config_error_line(err, f"[task.options] of task {name}", model)) from None
    except (TypeError, ValueError) as err:  # the task rejected its options
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"[task.options] for {name}: {first}") from None
