"""The top of a run: its one lifecycle (`run_job`), the pipeline per mode, and the executors."""
