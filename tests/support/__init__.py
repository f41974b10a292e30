"""Helpers shared by the test suite: real upstreams, a real certgate process."""
