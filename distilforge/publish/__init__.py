"""Dataset cards and publishing to the Hugging Face Hub."""

from distilforge.publish.card import write_card
from distilforge.publish.hub import PublishError, publish_dataset, publish_model

__all__ = ["PublishError", "publish_dataset", "publish_model", "write_card"]
