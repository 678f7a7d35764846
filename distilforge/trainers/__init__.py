"""Student training with TRL."""

from distilforge.trainers.sft import train_student

__all__ = ["train_student"]
