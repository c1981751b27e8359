"""Loopback benchmarks of actorcore against plain trio-websocket baselines.

Run ``python -m benchmarks [NAME ...] [--quick]``; see ``docs/benchmarks.md``. The server
(:mod:`benchmarks.server`) and the load generator (:mod:`benchmarks.client`) always run in
separate processes pinned to different CPUs; :mod:`benchmarks.runner` drives them.
"""
