"""Where model weights come from: embedded packages, local folders, GGUF files or the Hub."""

from distilforge.models.resolve import EMBEDDED, ModelError, check_model, resolve_model

__all__ = ["EMBEDDED", "ModelError", "check_model", "resolve_model"]
