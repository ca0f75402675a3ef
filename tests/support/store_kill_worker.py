"""Helper process of tests/test_store_lifecycle.py: ingests synthetic image features into a Qdrant folder.

Usage, from the repository root: python -m tests.support.store_kill_worker ENGINE FOLDER N BATCH PAUSE_SECONDS

ENGINE is "edge" or "local". With PAUSE_SECONDS > 0 it prints "INVERTING" before every inversion and pauses
before the second one, so the test can SIGKILL it after batch 1 is written, while batch 2 is being inverted.
It prints "READY" once the store is open (before ingesting) and "REPORT {json}" at the end.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.store import CrossModalStore
from tests.support.tiny_models import load_tiny

COLLECTION = "killed"


def synthetic_features(n: int) -> torch.Tensor:
    """[n, 32] unit features, the same in every process."""
    return F.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(1)), dim=-1)


def main(engine: str, folder: str, n: int, batch: int, pause: float) -> None:
    clip = load_tiny("test-tiny-clip", 0)
    store = CrossModalStore.open(folder, COLLECTION, clip, engine=engine, oti_config=OTIConfig(steps=2))
    print("READY", flush=True)  # the store is open: what follows is the ingestion
    if pause > 0:
        invert = store.encoder.invert
        calls = []

        def slow_invert(*args, **kwargs):
            calls.append(1)
            print("INVERTING", flush=True)
            if len(calls) >= 2:
                time.sleep(pause)
            return invert(*args, **kwargs)

        store.encoder.invert = slow_invert
    report = store.ingest_images(synthetic_features(n), batch_size=batch, progress=False)
    store.close()
    fields = ("inserted", "skipped_existing", "inverted", "duplicates")
    print("REPORT " + json.dumps({k: getattr(report, k) for k in fields}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
