"""The backfill on Ray Data: a pool of actors, each loading the model once, inverting streamed batches.

Two shapes, by where the collection lives:

- **a Qdrant server**: the dataset is the list of parts (Qdrant slices, or id-hash parts); each actor runs
  :class:`~crossgap_qdrant.store.backfill.BackfillWorker` on the parts it is given, reading and writing the
  server itself. A part that dies with its actor is retried by Ray on a restarted actor and resumes from what
  is already written.
- **an embedded folder** (Edge, qdrant-client local mode): one process may open it, so the driver reads the
  points lacking the vector page by page, queues each page on an actor (Ray Core actors, at most
  IN_FLIGHT_PER_WORKER pages queued on each), and writes each result as it arrives: memory stays bounded by the
  pages in flight, whatever the backlog.

Actors take one GPU each where the cluster has GPUs, else one CPU and ``threads`` PyTorch threads. Ray gets one
logical CPU more than there are actors on a local cluster, so the dataset's read tasks are never starved by the
actor pool. Tasks are retried and actors restarted without limit (Ray Data's defaults for an actor pool, and
set so on the embedded folder's actors);
since every write is an ``update_vectors`` of the vector a point lacks, a batch written twice is harmless and
a rerun after the driver dies resumes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from crossgap_qdrant.errors import MissingDependencyError
from crossgap_qdrant.store.adopt import adoption_layout
from crossgap_qdrant.store.backfill import (
    BackfillReport,
    BackfillWorker,
    deferred_index,
    missing_count,
)
from crossgap_qdrant.store.encoder import Encoder
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import InvalidRequestError
from crossgap_qdrant.store.schema import VectorNames

logger = logging.getLogger(__name__)

PARTS_PER_WORKER = 4
"""Parts per actor on a server: small parts spread the work evenly and lose little when an actor dies."""

IN_FLIGHT_PER_WORKER = 2
"""Pages queued on each actor on an embedded folder: one being inverted, one waiting, so an actor does not idle
while the driver reads and writes."""


@dataclass(frozen=True)
class ServerSpec:
    """How an actor opens the collection on a server itself (location, name, key, timeout, engine)."""

    location: str
    collection: str
    api_key: str | None = None
    timeout: float | None = None


def _require_ray():
    try:
        import ray  # noqa: PLC0415 - optional dependency (the `ray` extra)
        import ray.data  # noqa: PLC0415 - optional dependency (the `ray` extra)
    except ImportError:
        raise MissingDependencyError("the backfill on Ray needs Ray Data, which is not installed: "
                                     "pip install 'crossgap-qdrant[ray]'") from None
    return ray


class _Inverter:
    """A Ray actor with the model loaded once. On a server (Ray Data's actor pool, ``__call__``): whole parts
    read, inverted and written here. On an embedded folder (a Ray Core actor, ``invert_page``): pages of native
    vectors in, inverted vectors out, written by the driver."""

    def __init__(self, shared: Any, server: ServerSpec | None = None):
        ray = _require_ray()
        setup = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
        torch.set_num_threads(setup["threads"])
        clip = setup["clip"]
        if ray.get_gpu_ids() and torch.cuda.is_available():
            clip.model.to("cuda")
        self.encoder = Encoder(clip, setup["dim"], setup["oti"], setup["ovi"], {})
        self.names, self.modality, self.batch_size = setup["names"], setup["modality"], setup["batch_size"]
        self.worker = None
        self.ready_at = time.time()  # wall clock: the driver compares it with its own start
        if server is not None:
            collection = open_collection(server.location, server.collection, api_key=server.api_key,
                                         timeout=server.timeout)
            collection = adoption_layout(collection, collection.schema(), self.names)[0]
            self.worker = BackfillWorker(collection, self.encoder, self.names, self.modality,
                                         batch_size=self.batch_size, slices=setup["slices"])

    def __call__(self, batch: dict[str, np.ndarray]):
        """Parts of a server's collection: read, inverted and written here, one output row per written page."""
        for part in batch["part"].tolist():
            for ids, feats in self.worker.pending(int(part), int(batch["total"][0])):
                self.worker.write(ids, self.worker.invert(ids, feats))
                yield {"written": np.array([len(ids)]), "ready_at": np.array([self.ready_at])}

    def invert_page(self, ids: list[Any], feats: np.ndarray) -> tuple[list[Any], np.ndarray, float]:
        """(ids, [B, E] inverted vectors, when this actor had loaded the model) of one page of native vectors."""
        out = self.encoder.invert(self.modality, torch.tensor(feats), [str(p) for p in ids])
        return ids, out.numpy(), self.ready_at


def _actors(ray, shared: Any, workers: int, gpus: int) -> list:
    """``workers`` inverter actors, restarted (and their calls retried) without limit when they die."""
    remote = ray.remote(_Inverter).options(num_cpus=0 if gpus else 1, num_gpus=gpus, max_restarts=-1,
                                           max_task_retries=-1)
    return [remote.remote(shared) for _ in range(workers)]


def _stream_pages(ray, actors: list, pages) -> Any:
    """Yields (ids, inverted vectors, ready_at) of every page of ``pages`` ((ids, [B, E] features)), in the order
    they finish. Each page goes to the actor with the fewest queued; an actor has at most IN_FLIGHT_PER_WORKER
    queued (Ray runs an actor's calls in order), so the next page is waiting when it finishes one, and the
    driver holds at most that many pages per actor."""
    queued = [0] * len(actors)
    owner: dict[Any, int] = {}  # the call's object ref -> its actor's index

    def finished():
        (ref,), _ = ray.wait(list(owner), num_returns=1)
        queued[owner.pop(ref)] -= 1
        return ray.get(ref)

    for ids, feats in pages:
        if len(owner) >= len(actors) * IN_FLIGHT_PER_WORKER:
            yield finished()
        index = min(range(len(actors)), key=queued.__getitem__)
        owner[actors[index].invert_page.remote(ids, feats.numpy())] = index
        queued[index] += 1
    while owner:
        yield finished()


def backfill_on_ray(collection: Any, encoder: Any, names: VectorNames, modality: str = "image", *,
                    address: str | None = None, workers: int = 2, batch_size: int = 64, threads: int = 1,
                    server: ServerSpec | None = None, progress: bool = True,
                    on_written: Callable[[int], None] | None = None) -> BackfillReport:
    """Backfills the inverted vectors of ``collection`` on Ray (see the module docstring).

    Args:
        collection: the collection as the driver opened it (an adopted one's companion view included).
        encoder: the driver's encoder: its model and inversion settings (warm start included) go to the actors.
        address: a Ray cluster ("auto", "ray://host:10001"); None starts a local one with workers + 1 CPUs.
        workers: actors (model copies).
        threads: PyTorch threads per CPU actor.
        server: set for a Qdrant server: the actors open the collection themselves and write to it.
        on_written: called with the number of points of each batch written (as the progress bar is).

    Returns:
        The report (written counts as the driver saw them; a batch retried after a crash counts again).
    """
    ray = _require_ray()
    if workers < 1:
        raise InvalidRequestError(f"workers must be >= 1, got {workers}")
    started, started_wall = time.perf_counter(), time.time()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        if address is None:  # a local cluster: its workers import this very package (a checkout, not installed)
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.verbose_progress = False
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    worker = BackfillWorker(collection, encoder, names, modality, batch_size=batch_size)
    shared = ray.put({"clip": encoder.clip, "dim": encoder.dim, "oti": encoder.oti_config, "ovi": encoder.ovi_config,
                      "names": names, "modality": modality, "batch_size": batch_size, "threads": threads,
                      "slices": worker.slices})
    report = BackfillReport(partition="slice" if worker.slices else "id-hash")
    desc = f"backfill {modality}s on Ray ({workers} worker{'s' * (workers > 1)})"
    ready: list[float] = []  # when the actors that sent each batch had loaded the model
    try:
        total = missing_count(collection, names, modality)
        with tqdm(total=total, desc=desc, unit="pt", disable=not progress, dynamic_ncols=True) as bar:
            if server is not None:
                parts = workers * PARTS_PER_WORKER
                ds = ray.data.from_items([{"part": p, "total": parts} for p in range(parts)],
                                         override_num_blocks=parts)
                # Ray Data restarts the pool's actors and retries their tasks without limit by default
                out = ds.map_batches(_Inverter, fn_constructor_kwargs={"shared": shared, "server": server},
                                     batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                                     num_cpus=0 if gpus else 1, num_gpus=gpus)
                with deferred_index(getattr(collection, "companion", collection), names.inverted(modality)):
                    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                        ready.append(float(batch["ready_at"].min()))
                        written = int(batch["written"].sum())
                        report.written += written
                        bar.update(written)
                        if on_written is not None:
                            on_written(written)
            else:
                actors = _actors(ray, shared, workers, gpus)
                try:
                    for ids, vectors, ready_at in _stream_pages(ray, actors, worker.pending(0, 1, report)):
                        ready.append(ready_at)
                        worker.write(ids, torch.tensor(vectors))
                        report.written += len(ids)
                        bar.update(len(ids))
                        if on_written is not None:
                            on_written(len(ids))
                finally:
                    for actor in actors:  # also on a cluster this call did not start
                        ray.kill(actor)
    finally:
        if owns_ray:  # the cluster (or connection) this call started ends with it
            ray.shutdown()
    report.seconds = time.perf_counter() - started
    if ready:
        report.seconds_start_up = max(0.0, min(ready) - started_wall)
    return report
