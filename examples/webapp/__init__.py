"""The example web app: the guide's tasks enqueued from HTTP handlers, the worker started in the lifespan."""
