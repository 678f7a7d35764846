"""Every pydantic model at the boundaries: the job config, seeds and records, the service's bodies. Imports no other room."""
