"""What every job-config section shares: strict models (an unknown key fails), the error the loader
raises, and the warning a renamed key gives."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

EMBEDDED_STUDENT = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, line and key."""


class KeyConflict(ValueError):
    """A value valid alone that contradicts another key. `path` (dotted, from the model that raises it)
    names the key to blame, so the loader points at that key's line instead of the section's."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path, self.detail = tuple(path.split(".")), detail


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RenamedKey(FutureWarning):
    """A config key that was renamed: it still works, and the CLI prints this one line about it."""
