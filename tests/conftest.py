"""Registers the shared fixtures (tests/support/fixtures.py) for every test; no test touches the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["tests.support.fixtures"]
