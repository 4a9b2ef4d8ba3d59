"""Ray Serve under a busy CI box. Ray assumes a quiet machine: its workers (Serve's controller,
proxy and replicas) run at nice 15, so any other work on the CPU starves them, and the HTTP
proxy must pass its ready check within 5 s or the controller kills it (``serve.start`` fails).
The tests run Ray's workers at normal priority and give its checks deadlines sized for 2 shared
cores; child processes and the in-process cluster read them from the environment."""

import os

RAY_DEADLINES = {
    "RAY_worker_niceness": "0",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
}
for _key, _value in RAY_DEADLINES.items():
    os.environ.setdefault(_key, _value)
