"""HTTP/WebSocket routers: thin — validate, call a service, return."""
