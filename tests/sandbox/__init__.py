"""Tests of the sandbox room: policy, protocol, evaluate end to end, the warm pool."""
