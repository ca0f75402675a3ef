"""``python -m crossgap_qdrant.cli``."""

from crossgap_qdrant.cli import run

run()
