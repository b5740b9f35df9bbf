"""open_clip image embeddings: model loading, device choice, batched L2-normalised inference."""

from datapool_pipeline.embedding.model import EmbeddingModel, load_model

__all__ = ["EmbeddingModel", "load_model"]
