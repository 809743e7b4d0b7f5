"""Suite-wide settings: no test may reach an LLM provider or fetch litellm's price map,
and no test may use the developer's database or API keys."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DISCO_BLOCK_REAL_LLM"] = "1"  # agents/llm.py raises on any call to a real provider
os.environ.pop("DISCO_DB", None)
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
for _key in [k for k in os.environ if k.endswith(("_API_KEY",)) and not k.startswith("DISCO_TEST")]:
    os.environ.pop(_key, None)
