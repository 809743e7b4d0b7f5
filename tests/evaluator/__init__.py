"""Tests of the evaluator package (tasks and their stages)."""
