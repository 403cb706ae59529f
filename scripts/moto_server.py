"""moto's S3-protocol server (`python -m moto.server`) with its requests serialised.

Usage: moto_server.py [moto.server's arguments, e.g. -H 127.0.0.1 -p 5000]

moto answers each request on its own thread, and its PutObject checks `If-None-Match: *`
(get the key, then store it) without a lock: two concurrent creates of one key can both
succeed (measured: 8 parallel curl PUTs, two got 200 in 1 of 60 rounds). S3 itself is atomic
here, and delta-rs's commit (`PutMode::Create` of the next `_delta_log` entry) relies on it.
One lock around the whole WSGI call (the response materialised inside it) makes every request
atomic; connections are still accepted on their own threads.
"""

import sys
import threading

import moto.server

_run_simple = moto.server.run_simple
_lock = threading.Lock()


def _serialised(app):
    def call(environ, start_response):
        with _lock:
            return list(app(environ, start_response))

    return call


def run_simple(hostname, port, application, **kwargs):
    _run_simple(hostname, port, _serialised(application), **kwargs)


moto.server.run_simple = run_simple
moto.server.main(sys.argv[1:])
