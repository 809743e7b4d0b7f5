"""Wiring: build a campaign's collaborators (task, proposer, policy, runner, store, hooks)
from its config. The one place that knows which concrete classes a config selects; the loop
itself only sees the Protocols."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from discovery.config import CampaignConfig
from discovery.errors import UserError
from discovery.hooks import CampaignHooks, NullHooks
from discovery.loop import CampaignLoop
from discovery.policies import make_policy
from discovery.progress import ConsoleReporter, JsonLinesReporter, Reporter
from discovery.runners import (
    WARM_POOL_ENV, InlineRunner, RayRunner, Runner, local_gpu_count, ray_env_defaults,
    task_preload, wants_warm_pool, warm_pool_setting,
)
from discovery.store import CampaignStore
from discovery.tasks import build_task
from knowledge_base.db import Database, DatabaseError, open_database, resolve_url
from sandbox.api import SandboxLimits


def open_db(cli_url: str | None, config_url: str | None = None) -> Database:
    """Open (and migrate) the database: --db > $DISCO_DB > config `database` > ./disco.db."""
    url = cli_url
    if url is None and not os.environ.get("DISCO_DB") and config_url:
        url = config_url
    try:
        return open_database(resolve_url(url))
    except DatabaseError as err:
        raise UserError(str(err)) from None


def sandbox_limits(cfg: CampaignConfig) -> SandboxLimits:
    sb = cfg.sandbox
    target = cfg.targets[0]
    mem_gb = target.memory_limit_gb or sb.memory_gb
    return SandboxLimits(
        memory_bytes=int(mem_gb * 2**30) if mem_gb else None,
        max_output_bytes=sb.max_output_kb * 1024,
    )


def _cuda_available() -> bool:
    return local_gpu_count() > 0


def cpu_fallback(cfg: CampaignConfig) -> tuple[CampaignConfig, str | None]:
    """A `cuda` target on a machine without a GPU (and no cluster to send it to) runs every
    stage on the CPU; the tasks then use their reduced CPU sizes (reported in the metrics,
    e.g. `mqar_reduced = 1`). Returns the config to run and a note saying so, or no note."""
    wants_gpu = [t for t in cfg.targets if t.device == "cuda"]
    if not wants_gpu or cfg.runner.ray_address is not None or _cuda_available():
        return cfg, None
    targets = [
        t.model_copy(update={"device": "cpu", "resources": {"CPU": 1.0}}) if t.device == "cuda" else t
        for t in cfg.targets
    ]
    names = ", ".join(t.name for t in wants_gpu)
    note = (f"no GPU on this machine: target(s) {names} run every stage on the CPU at reduced "
            "sizes (metrics carry *_reduced = 1)")
    return cfg.model_copy(update={"targets": targets}), note


def make_runner(cfg: CampaignConfig) -> Runner:
    if cfg.runner.kind == "inline":
        return InlineRunner(max_in_flight=cfg.runner.max_in_flight)
    ray_env_defaults()
    try:
        setting = warm_pool_setting(cfg.sandbox.warm_pool)
        env = {"env_vars": {WARM_POOL_ENV: setting}} if setting else None
        return RayRunner(address=cfg.runner.ray_address, max_in_flight=cfg.runner.max_in_flight,
                         runtime_env=env)
    except ConnectionError as err:
        raise UserError(
            f"--ray-address {cfg.runner.ray_address!r}: cannot connect to Ray ({err}); "
            "check the address and that RAY_AUTH_MODE matches the cluster"
        ) from None


@dataclass
class Campaign:
    loop: CampaignLoop
    runner: Runner
    extras: list[Any] = field(default_factory=list)

    def close(self) -> None:
        self.runner.close()
        for x in self.extras:
            close = getattr(x, "close", None)
            if close is not None:
                close()


def build_campaign(
    cfg: CampaignConfig, database: Database, *, json_progress: bool = False,
    reporter: Reporter | None = None, runner: Runner | None = None,
    llm: Any | None = None,
) -> Campaign:
    """Everything a campaign needs. ``runner`` and ``llm`` may be injected (tests)."""
    import sandbox

    cfg, fallback_note = cpu_fallback(cfg)
    task = build_task(cfg.task.name, cfg.task.options)
    store = CampaignStore(database, cfg, task)
    hooks: CampaignHooks = NullHooks()
    extras: list[Any] = []
    if cfg.proposer.kind == "llm":
        from discovery.llm_setup import build_llm_side

        proposer, hooks, extras = build_llm_side(cfg, database, store, task, llm=llm)
    else:
        from agents.offline import OfflineProposer, genome_key

        seen = set()
        for g in store.genomes():
            try:
                seen.add(genome_key(g))
            except ValueError:  # a genome the current design space no longer accepts
                continue
        try:
            proposer = OfflineProposer(seen, task=task.name)
        except ValueError as err:
            raise UserError(f"[proposer] kind = 'offline': {err}; use kind = 'llm' for this task") from None
    rep = reporter or (JsonLinesReporter() if json_progress else ConsoleReporter())
    if fallback_note:
        rep.note(fallback_note)
    the_runner = runner or make_runner(cfg)
    if cfg.runner.kind == "inline":
        setting = warm_pool_setting(cfg.sandbox.warm_pool)
        warm = [t for t in cfg.targets if wants_warm_pool(setting, t.device)]
        if warm:  # one pool serves every target: what any of them preloads
            preload = tuple(dict.fromkeys(m for t in warm for m in task_preload(task, t)))
            sandbox.configure_pool(cfg.runner.max_in_flight, preload)
    loop = CampaignLoop(
        cfg, store, task, proposer, lambda: make_policy(cfg.policy, cfg.seed), the_runner,
        sandbox_limits(cfg), reporter=rep, hooks=hooks, check_code=sandbox.check,
    )
    return Campaign(loop=loop, runner=the_runner, extras=extras)
