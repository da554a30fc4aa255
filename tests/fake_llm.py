"""The fake LLM moved to :mod:`orchestrator.fake_llm` (the fault suite runs it too); re-exported here
so the tests' ``from fake_llm import FakeLlm`` keeps working."""

from wacrm.orchestrator.fake_llm import FakeLlm

__all__ = ["FakeLlm"]
