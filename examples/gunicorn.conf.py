"""gunicorn settings for llmrouter: threaded workers, timeouts that let long streams finish.

    LLMROUTER_CONFIG=examples/minimal.toml \\
        gunicorn -c examples/gunicorn.conf.py --bind 127.0.0.1:8000 'flask_ext.app:create_app()'

Every worker process builds its own Router from ``$LLMROUTER_CONFIG``; quotas and billing
stay exact across them because every decision is one statement in the shared database.
Run it behind a proxy that buffers request bodies (nginx does by default): a thread reading
a body waits as long as the client takes to send it.
"""

import os

# gthread: each worker serves `threads` requests at once, so a stream that lasts minutes
# holds one thread, not a whole process. sync workers would hold a process per stream, and
# their `timeout` would kill any stream longer than it.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))

# Loopback by default; `--bind` on the command line wins (behind a proxy: its address).
bind = "127.0.0.1:8000"

# A gthread worker tells the arbiter it is alive from its main loop while requests run in
# its threads, so `timeout` only catches a worker that hangs (it does not cut a long
# stream); the Router's own `max_call_seconds` bounds a call.
timeout = 60
# On a reload or shutdown (SIGTERM), in-flight requests get this long to finish; a stream
# still running after it is cut and billed as `partial` for what was delivered. Raise it
# (up to max_call_seconds) if long generations must survive deploys.
graceful_timeout = 120
# Seconds an idle keep-alive connection is held open; behind a proxy (nginx, a load
# balancer) keep it above the proxy's own idle timeout towards gunicorn.
keepalive = 75

# No preload_app: each worker opens its own database connections after the fork.
preload_app = False
# Log to stderr, so a container's log collector gets it.
accesslog = "-"
errorlog = "-"
# gunicorn 25.1+ opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl),
# which a second gunicorn on the host would share; older versions ignore this setting.
control_socket_disable = True
