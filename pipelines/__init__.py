"""Custom `transformers` pipelines of this package; importing the package registers every task.

    import pipelines                      # registers the tasks below with transformers' PIPELINE_REGISTRY
    pipeline("composed-image-retrieval", model=path_or_repo, trust_remote_code=True)

Each task has its own `register_<task>()` function; `register_pipelines()` calls them all and runs on import.
Registration is idempotent (re-registering a task replaces it with the same class).
`pt_model` names an Auto class: a saved pipeline is reloaded with `getattr(transformers, name)`.
"""

from __future__ import annotations

from transformers import AutoModel, AutoModelForSeq2SeqLM
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .composed_image_retrieval import TASK as COMPOSED_IMAGE_RETRIEVAL_TASK
from .composed_image_retrieval import ComposedImageRetrievalPipeline, load_retrieval_image
from .gallery_index import GalleryIndex, SearchResult, model_identity
from .product_summarization import TASK as PRODUCT_SUMMARIZATION_TASK
from .product_summarization import ProductSummarizationPipeline


logger = logging.get_logger(__name__)


def register_composed_image_retrieval() -> None:
    """Register `composed-image-retrieval` (reference image + modification text → ranked gallery)."""
    PIPELINE_REGISTRY.register_pipeline(
        COMPOSED_IMAGE_RETRIEVAL_TASK,
        pipeline_class=ComposedImageRetrievalPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )


def register_product_summarization() -> None:
    """Register `product-summarization` (product text + optional image → summary and attributes)."""
    PIPELINE_REGISTRY.register_pipeline(
        PRODUCT_SUMMARIZATION_TASK,
        pipeline_class=ProductSummarizationPipeline,
        pt_model=AutoModelForSeq2SeqLM,
        type="multimodal",
    )


def register_pipelines() -> None:
    """Register every task of this package with transformers (called on import)."""
    register_composed_image_retrieval()
    register_product_summarization()


register_pipelines()

__all__ = [
    "COMPOSED_IMAGE_RETRIEVAL_TASK",
    "PRODUCT_SUMMARIZATION_TASK",
    "ProductSummarizationPipeline",
    "register_product_summarization",
    "ComposedImageRetrievalPipeline",
    "GalleryIndex",
    "SearchResult",
    "load_retrieval_image",
    "model_identity",
    "register_composed_image_retrieval",
    "register_pipelines",
]
