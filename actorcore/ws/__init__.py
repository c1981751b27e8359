"""The WebSocket side of actorcore: routing, the actor protocol, and the trio-websocket adapter.

Import :func:`actorcore.ws.server.serve` (or call ``registry.serve``) to serve a registry.
"""
