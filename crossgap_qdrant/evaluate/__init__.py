"""Which representation wins on your data: retrieval quality, query latency and ingestion cost per method.

For a labelled set (folder-per-class images, labelled texts, or a query/gallery split given as files) the
harness computes full-ranking retrieval metrics (:mod:`crossgap_qdrant.metrics`) for each method of
:data:`METHODS` (native, the inversion in both protocols and fused, the training-free rivals, hubness
correction), by brute force in torch and through Qdrant, recommends one, and writes a report;
:func:`apply_recommendation` makes a collection's searches use the answer.

Modules: :mod:`~crossgap_qdrant.evaluate.data` (labelled sets), :mod:`~crossgap_qdrant.evaluate.harness`
(configuration, features, metrics, costs), :mod:`~crossgap_qdrant.evaluate.representations` (the rivals
fitted on the sample), :mod:`~crossgap_qdrant.evaluate.backends` (torch and Qdrant scoring),
:mod:`~crossgap_qdrant.evaluate.results` (method names, result records),
:mod:`~crossgap_qdrant.evaluate.recommend` (the rule, and applying it), :mod:`~crossgap_qdrant.evaluate.report`
(markdown, plot, JSON).
"""

from crossgap_qdrant.evaluate.backends import RRF_K, QdrantBackend, hits_to_similarity, rrf_scores, torch_similarities
from crossgap_qdrant.evaluate.data import (
    DataError,
    LabelledSet,
    load_image_folder,
    load_labelled_set,
    load_labelled_texts,
    load_split,
)
from crossgap_qdrant.evaluate.harness import EvaluationConfig, evaluate
from crossgap_qdrant.evaluate.recommend import apply_recommendation, recommend
from crossgap_qdrant.evaluate.report import markdown_table, plotted_backend, write_report
from crossgap_qdrant.evaluate.results import (
    DESCRIPTIONS,
    KNOWN_METHODS,
    METHODS,
    RIVALS,
    EvaluationError,
    EvaluationResult,
    MethodResult,
    split_method,
)
from crossgap_qdrant.metrics import bootstrap_ci, paired_bootstrap_ci

__all__ = [
    "DESCRIPTIONS",
    "KNOWN_METHODS",
    "METHODS",
    "RIVALS",
    "RRF_K",
    "DataError",
    "EvaluationConfig",
    "EvaluationError",
    "EvaluationResult",
    "LabelledSet",
    "MethodResult",
    "QdrantBackend",
    "apply_recommendation",
    "bootstrap_ci",
    "evaluate",
    "hits_to_similarity",
    "load_image_folder",
    "load_labelled_set",
    "load_labelled_texts",
    "load_split",
    "markdown_table",
    "paired_bootstrap_ci",
    "plotted_backend",
    "recommend",
    "rrf_scores",
    "split_method",
    "torch_similarities",
    "write_report",
]
