"""Dataset cards and publishing to the Hugging Face Hub."""

from distilforge.publish.card import write_card
from distilforge.publish.hub import PublishError, PublishInputError, publish_dataset, publish_model

__all__ = ["PublishError", "PublishInputError", "publish_dataset", "publish_model", "write_card"]
