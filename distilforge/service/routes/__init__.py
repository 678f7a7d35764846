"""The HTTP API's routes, one module per resource; `service/api.py` assembles them into the app."""
