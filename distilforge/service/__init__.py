"""The service: HTTP API, durable job store, workers with leases, cron schedules, shared budgets."""
