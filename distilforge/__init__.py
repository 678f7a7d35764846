"""distilforge: black-box knowledge distillation from a teacher LLM to a trained, evaluated student."""

__version__ = "0.1.0"
