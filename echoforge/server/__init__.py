"""The EchoForge voice server: FastAPI app (``create_app``), routers, services.

Layout: ``app.py`` (factory + lifespan), ``routers/`` (thin HTTP/WebSocket handlers),
``services/`` (voices, task queue, synthesis, workers, auth, backup), ``schemas.py``
(request/response models), ``errors.py`` (OpenAI-shaped errors), ``deps.py`` (dependencies).
"""
