"""crossgap-qdrant: inter-modal image and text search in Qdrant through modality inversion."""

__version__ = "0.1.0"
