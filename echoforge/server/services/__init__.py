"""Server services: built once in the app's lifespan and used by the routers and workers."""
