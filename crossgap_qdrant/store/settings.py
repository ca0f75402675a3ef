"""What a collection records beyond its points, read and written by the store: the default search mode per
modality, hubness statistics, and warm starts for inversion. :class:`RecordedSettings` is the part of
:class:`~crossgap_qdrant.store.CrossModalStore` that manages them (the store's metadata record, the collection,
the names, the encoder and the model handle are the store's).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from qdrant_client import models

from crossgap_qdrant.inversion.warm_start_fit import fit_warm_start
from crossgap_qdrant.store import hubness as hubness_lib
from crossgap_qdrant.store import warm as warm_lib
from crossgap_qdrant.store.errors import InvalidRequestError, WarmStartNotFoundError
from crossgap_qdrant.store.request import DEFAULT_MODE, MODES
from crossgap_qdrant.store.schema import METADATA_KEY, check_modality


class RecordedSettings:
    """Default modes, hubness correction and warm starts recorded in the collection's metadata."""

    # --------------------------------------------------------------------------------------- default modes
    def default_mode(self, modality: str) -> str:
        """The mode a same-modality search uses when none is given: recorded by the evaluation, else
        gallery_inverted."""
        recorded = self._metadata[METADATA_KEY].get("default_modes") or {}
        return recorded.get(check_modality(modality), DEFAULT_MODE)

    def default_hubness(self, modality: str) -> bool:
        """Whether searches in the default mode apply hubness correction (recorded by the evaluation)."""
        return bool((self._metadata[METADATA_KEY].get("default_hubness") or {}).get(check_modality(modality)))

    def set_default_mode(self, modality: str, mode: str | None, hubness: bool = False) -> None:
        """Records the mode later searches of ``modality`` use by default (None: back to gallery_inverted),
        and whether they apply hubness correction (fit it first: :meth:`fit_hubness`)."""
        check_modality(modality)
        if mode is not None and mode not in MODES and mode not in self.encoder.derived_for(modality):
            raise InvalidRequestError(f"unknown {modality} mode {mode!r}")

        def changes(record: dict[str, Any]) -> dict[str, Any]:
            if hubness:
                hubness_lib.hub_correction(record, modality, mode or DEFAULT_MODE, True)  # raises when not fitted
            modes = {k: v for k, v in (record.get("default_modes") or {}).items() if k != modality}
            hub = {k: v for k, v in (record.get("default_hubness") or {}).items() if k != modality}
            return {"default_modes": {**modes, **({modality: mode} if mode else {})},
                    "default_hubness": {**hub, **({modality: True} if hubness else {})}}

        self._record(changes)

    def fit_hubness(self, modality: str = "image", mode: str | None = None, *, bank_size: int = 1000,
                    temperature: float = hubness_lib.DEFAULT_TEMPERATURE,
                    weight: float = hubness_lib.DEFAULT_WEIGHT, query_filter: models.Filter | None = None,
                    seed: int = 0) -> dict[str, Any]:
        """Fits DBNorm hubness statistics for ``mode`` searches (default: the default mode) and stores them: one
        payload value per point (crossgap_qdrant.store.hubness), parameters in the collection metadata.

        Searches apply them with ``hubness=True`` (or by default after :meth:`set_default_mode` with
        ``hubness=True``). Points added later use the mean value until the next fit.

        Returns:
            The recorded parameters (key, temperature, weight, default, bank_size, points, vectors).
        """
        check_modality(modality)
        mode = mode or self.default_mode(modality)
        fitted = hubness_lib.fit_hubness(self.collection, self.names, self.encoder.derived_for(modality), modality,
                                         mode, bank_size=bank_size, temperature=temperature, weight=weight,
                                         query_filter=query_filter, seed=seed)
        def changes(record: dict[str, Any]) -> dict[str, Any]:
            stats = dict(record.get("hubness") or {})
            stats[modality] = {**(stats.get(modality) or {}), mode: fitted}
            return {"hubness": stats}

        self._record(changes)
        return fitted

    def hub_correction(self, modality: str, mode: str, hubness: bool | None = None):
        """The hubness correction a ``modality`` search in ``mode`` applies (None: none), for ``hubness`` True,
        False or None (the recorded default; see crossgap_qdrant.store.hubness.hub_correction)."""
        return hubness_lib.hub_correction(self._metadata[METADATA_KEY], check_modality(modality), mode, hubness)

    # ----------------------------------------------------------------------------------------- warm starts
    def fit_warm_start(self, modality: str = "image", *, sample: int | None = None, steps: int | None = None,
                       path: str | os.PathLike | None = None, progress: bool = True, **options: Any):
        """Fits a warm start for inverting ``modality`` from up to ``sample`` stored native vectors, keeps it
        with the collection, and uses it from now on (:meth:`use_warm_start`).

        Its exact inversions use the store's settings (``oti_config`` / ``ovi_config``, published by default).

        Args:
            modality: "image" (OTI) or "text" (OVI).
            sample: stored native vectors inverted exactly as the distillation set (default 2000 images or 200
                texts: an exact text inversion costs 1000 full vision-tower steps).
            steps: exact steps after the warm start's prediction in later inversions; default the fit's
                recommendation (the fewest steps that bring the held-out features as close to the exact ones
                as two exact runs are to each other; see :class:`crossgap_qdrant.inversion.WarmStartFit`).
            path: where the file goes; default the collection's own folder (embedded engines; required for a
                server or ":memory:", which keep no files).
            options: passed to :func:`crossgap_qdrant.inversion.fit_warm_start` (hidden, epochs, ...).

        Returns:
            The fit's report (:class:`crossgap_qdrant.inversion.WarmStartFit`).
        """
        modality = check_modality(modality)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise InvalidRequestError(f"steps must be an int >= 0 (or None: the fit's recommendation), got {steps!r}")
        target = warm_lib.file_path(self.collection, modality, path)
        sample = warm_lib.DEFAULT_SAMPLE[modality] if sample is None else sample
        features = warm_lib.sample_native(self.collection, self.names, modality, sample)
        warm, fit = fit_warm_start(self.clip, features, warm_lib.KIND[modality], self._exact_config(modality),
                                   progress=progress, **options)
        steps = fit.steps if steps is None else steps

        def write_record(sha256: str) -> None:
            entry = warm_lib.record_for(self.collection, target, sha256, steps, fit.lr, fit)
            self._record(lambda record: {
                warm_lib.WARM_KEY: {**(record.get(warm_lib.WARM_KEY) or {}), modality: entry}})

        warm_lib.save_recorded(warm, target, write_record)
        self._attach_warm_start(modality, warm, steps, fit.lr)
        return fit

    def use_warm_start(self, modality: str | None = None, steps: int | None = None) -> None:
        """Inverts with the collection's recorded warm start from now on: query-side inversion (query_inverted,
        fused), ingestion and backfills take ``steps`` exact steps (default: the recorded budget, at the
        recorded learning rate) after its prediction, instead of the published 150 (OTI) or 1000 (OVI). Text
        (OVI) steps run in bf16 on CUDA and on CPUs with bf16 hardware (precision "auto"), else in float32,
        unless ``ovi_config`` asked for another reduced precision.

        Args:
            modality: "image", "text", or None for every modality that has one.

        Raises:
            LookupError: no warm start is recorded for ``modality`` (fit one with :meth:`fit_warm_start`).
            FileNotFoundError, ValueError: its file is missing or is not the recorded one.
        """
        recorded = self._metadata[METADATA_KEY].get(warm_lib.WARM_KEY) or {}
        wanted = [check_modality(modality)] if modality is not None else sorted(recorded)
        if not wanted or any(m not in recorded for m in wanted):
            missing = modality or "image or text"
            raise WarmStartNotFoundError(f"collection {self.collection.name!r} has no {missing} warm start: fit one "
                                         "first "
                                         f"(store.fit_warm_start, CLI: crossgap-qdrant fit-warm-start)")
        for m in wanted:
            warm = warm_lib.load_recorded(self.collection, m, recorded[m], self.clip.device)
            lr = recorded[m].get("lr", self._exact_config(m).lr)
            self._attach_warm_start(m, warm, recorded[m]["steps"] if steps is None else steps, lr)

    def _exact_config(self, modality: str):
        return self.oti_config if modality == "image" else self.ovi_config

    def _attach_warm_start(self, modality: str, warm, steps: int, lr: float) -> None:
        config = dataclasses.replace(self._exact_config(modality), warm_start=warm, steps=steps, lr=lr)
        if modality == "text" and config.precision == "fp32":
            # A text inversion's steps are full vision-tower passes: bf16 where the hardware has it
            config = dataclasses.replace(config, precision="auto")
        if modality == "image":
            self.encoder.oti_config = config
        else:
            self.encoder.ovi_config = config

    def _record(self, changes: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Merges ``changes(record)`` into the collection's metadata record, read as stored now (another store on
        the same collection may have changed it since this one opened; this store's copy where nothing is
        stored yet), and updates this store's copy. A missing collection is created (a write)."""
        self._create_pending()
        schema = self.collection.schema()
        current = schema.metadata.get(METADATA_KEY) or self._metadata[METADATA_KEY]
        record = {**current, **changes(current)}
        self.collection.set_metadata({**schema.metadata, METADATA_KEY: record})
        self._metadata = {METADATA_KEY: record}
