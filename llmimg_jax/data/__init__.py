"""Datasets (captioned_shapes, captioned_folder, coco_captions) and the grain input pipeline."""
from llmimg_jax.data.global_batch import to_global_batch
from llmimg_jax.data.pipeline import (
    DATASETS,
    ExampleSource,
    default_data_config,
    load_source,
    make_iterator,
    validate_data_config,
)

__all__ = ["DATASETS", "ExampleSource", "default_data_config", "load_source", "make_iterator",
           "to_global_batch", "validate_data_config"]
