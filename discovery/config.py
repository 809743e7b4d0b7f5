"""Campaign configuration: one TOML file, validated by pydantic with ``extra="forbid"``.

Every validation error is turned into one line naming the key, the value received and what
is allowed (``config_error_line``), so a typo never produces a traceback. The resolved config
(defaults filled in) is stored with the campaign; running the same campaign again resumes it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discovery.errors import UserError
from evaluator.types import TargetSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    name: str = "token-mixer"
    options: dict[str, Any] = Field(default_factory=dict)


class LLMRoleConfig(_Strict):
    model: str
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(4096, ge=16)
    api_base: str | None = None
    weight: float = Field(1.0, gt=0.0)  # fixed-weight model choice among several per role


class LLMConfig(_Strict):
    """Models per role. Each role takes one table or an array of tables (several models)."""

    researcher: list[LLMRoleConfig] = Field(default_factory=list)
    debugger: list[LLMRoleConfig] = Field(default_factory=list)
    analyst: list[LLMRoleConfig] = Field(default_factory=list)
    extractor: list[LLMRoleConfig] = Field(default_factory=list)
    selection: Literal["weights", "ucb"] = "weights"
    timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(4, ge=1)
    max_retries: int = Field(4, ge=0)

    @field_validator("researcher", "debugger", "analyst", "extractor", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v


class ProposerConfig(_Strict):
    kind: Literal["offline", "llm"] = "offline"
    debug_rounds: int = Field(2, ge=0, le=10)  # debugger rounds per failed candidate (llm only)
    analyst: bool = True  # write an insight after each evaluation (llm only)
    validator_retries: int = Field(1, ge=0, le=5)  # re-asks on an unparseable reply
    knowledge_top_k: int = Field(5, ge=0, le=50)
    # Free-form (LLM) code at least this similar to an evaluated candidate is a near-duplicate.
    max_similarity: float = Field(0.97, gt=0.0, le=1.0)
    load_builtin_knowledge: bool = True


class PolicyConfig(_Strict):
    kind: Literal["random", "evolution"] = "evolution"
    population: int = Field(16, ge=2)  # regularized evolution: aging population size
    tournament: int = Field(4, ge=1)  # tournament size for parent selection
    crossover_rate: float = Field(0.25, ge=0.0, le=1.0)
    fresh_rate: float = Field(0.1, ge=0.0, le=1.0)  # proposals sampled without a parent

    @model_validator(mode="after")
    def _tournament_fits(self) -> PolicyConfig:
        if self.tournament > self.population:
            raise ValueError(
                f"tournament ({self.tournament}) must be <= population ({self.population})"
            )
        return self


class FidelityConfig(_Strict):
    # Highest rung evaluated. Rung 0 runs for every candidate; a candidate climbs to the next
    # rung only if it ranks in the top `promote_fraction` of its rung (successive halving).
    max_rung: int = Field(0, ge=0, le=4)
    promote_fraction: float = Field(0.25, gt=0.0, le=1.0)
    min_to_promote: int = Field(4, ge=1)  # rung size before the first promotion decision


class BudgetConfig(_Strict):
    max_evaluations: int = Field(40, ge=1)  # evaluations of rung 0, seeds included
    max_wall_minutes: float = Field(60.0, gt=0)
    max_llm_dollars: float | None = Field(None, ge=0)
    max_gpu_hours: float | None = Field(None, ge=0)


class RunnerConfig(_Strict):
    kind: Literal["ray", "inline"] = "ray"
    max_in_flight: int = Field(2, ge=1)
    ray_address: str | None = None  # None: start local Ray in-process
    infra_retries: int = Field(1, ge=0, le=5)


class SandboxConfig(_Strict):
    memory_gb: float | None = Field(None, gt=0)  # None: the sandbox default fraction of RAM
    timeout_scale: float = Field(1.0, gt=0)  # multiplies every stage timeout
    max_output_kb: int = Field(64, ge=1)
    # Keep a pre-started, warmed-up sandbox child per worker: the next evaluation skips the
    # process start, the imports and the task's device set-up (for a token mixer on a GPU,
    # CUDA and compile machinery: seconds of idle GPU per candidate, docs/PERFORMANCE.md).
    # None (the default) = on for evaluations on `cuda` targets, off for CPU ones: with every
    # core busy the pre-start competes with running evaluations (measured slower on 2 cores).
    warm_pool: bool | None = None


class FitnessConfig(_Strict):
    # Weight per objective name; objectives not named get `default_weight`. The defaults put
    # quality (recall, LM loss) ahead of speed and size for the token-mixer task; names a task
    # does not report are ignored.
    weights: dict[str, float] = Field(default_factory=lambda: {
        "mqar_acc": 2.0, "mqar_loss": 1.0, "lm_val_loss": 2.0, "train_tokens_per_s": 1.0,
        "params": 0.5,
    })
    default_weight: float = Field(1.0, ge=0.0)
    # Steepness of the sigmoid applied to the relative improvement over the reference.
    scale: float = Field(4.0, gt=0.0)


class CampaignConfig(_Strict):
    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = 0
    description: str = ""
    reference: str | None = None  # seed name fitness is measured against (default: the task's)
    database: str | None = None  # overridden by --db / DISCO_DB
    task: TaskConfig = Field(default_factory=TaskConfig)
    proposer: ProposerConfig = Field(default_factory=ProposerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    targets: list[TargetSpec] = Field(default_factory=lambda: [TargetSpec()])
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    fitness: FitnessConfig = Field(default_factory=FitnessConfig)

    @field_validator("targets")
    @classmethod
    def _targets_unique(cls, v: list[TargetSpec]) -> list[TargetSpec]:
        if not v:
            raise ValueError("at least one [[targets]] entry is required")
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique, got {names}")
        return v

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """Walk ``loc`` through nested models to list the keys allowed where an extra key was found."""
    if model is None:
        return None
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        args = getattr(ann, "__args__", ())
        nested = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        current = nested[0]
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def config_error_line(
    err: ValidationError, source: str, model: type[BaseModel] | None = CampaignConfig
) -> str:
    """One line for the first validation error: where, what was received, what is allowed."""
    errors = err.errors()
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))
    where = _format_loc(loc)
    value = first.get("input")
    value_repr = repr(value)
    if len(value_repr) > 80:
        value_repr = value_repr[:77] + "..."
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
        msg = f"{source}: unknown key '{where}' (value {value_repr}); {hint}"
    elif first["type"] == "missing":
        msg = f"{source}: missing required key '{where}'; add it"
    else:
        msg = f"{source}: '{where}' = {value_repr} is invalid: {first['msg']}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error(s))"
    return msg


def parse_config(data: dict[str, Any], source: str = "config") -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(config_error_line(err, source)) from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign TOML file; every problem is a one-line ``UserError``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file not found: {p} (create one with `disco init {p}`)")
    if not p.is_file():
        raise UserError(f"config path is not a file: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{p}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file") from None
    return parse_config(data, str(p))
