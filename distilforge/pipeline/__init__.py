"""The pipeline: its step API (`steps`, `progress`, a low floor) and the engine that runs a job (`run_job`)."""
