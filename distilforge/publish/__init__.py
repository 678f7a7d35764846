"""Dataset cards and publishing to the Hugging Face Hub."""

from distilforge.publish.card import write_card
from distilforge.publish.hub import PublishError, publish_dataset

__all__ = ["PublishError", "publish_dataset", "write_card"]
