"""A real git host on 127.0.0.1 for the tests: git's smart HTTP (``git http-backend``) and a Git LFS server.

Run as a separate program::

    python lfs_http_server.py ROOT PORT_FILE

Every bare repository under ROOT is served at ``http://127.0.0.1:PORT/<path>``,
and its LFS endpoint where git-lfs looks for it with no configuration,
``<repository URL>/info/lfs``, is giftless (the LFS server from PyPI) with its
local storage under ``ROOT/lfs-storage``.  The port is chosen by the OS and
written to PORT_FILE once the server accepts connections.  Anonymous users may
read and write (the tests are alone on the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    root, port_file = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    os.environ["GIFTLESS_CONFIG_STR"] = json.dumps({
        "AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
        "LEGACY_ENDPOINTS": False,
        "PRE_AUTHORIZED_ACTION_PROVIDER": {"options": {"private_key": "gitpack-tests-only-" + "k" * 32}},
        "TRANSFER_ADAPTERS": {"basic": {"options": {"storage_options": {"path": str(root / "lfs-storage")}}}},
    })
    import warnings

    warnings.simplefilter("ignore")
    from giftless.app import init_app
    from werkzeug.serving import make_server

    lfs_app = init_app()

    def git_backend(environ, start_response):
        """``git http-backend`` as a CGI program (what a git host runs behind its web server)."""
        length = environ.get("CONTENT_LENGTH")
        if length:
            body = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):  # chunked: werkzeug has de-chunked it
            body = environ["wsgi.input"].read()
        else:
            body = b""
        env = {
            "PATH": os.environ.get("PATH", ""), "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": environ.get("PATH_INFO", ""), "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1", "REMOTE_USER": "tester",
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
        }
        env.update({k: v for k, v in environ.items() if k.startswith("HTTP_") and isinstance(v, str)})
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = value.strip()
            elif key:
                headers.append((key, value.strip()))
        start_response(status, headers)
        return [payload]

    def app(environ, start_response):
        if "/info/lfs/" in environ.get("PATH_INFO", ""):
            return lfs_app(environ, start_response)
        return git_backend(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_port))
    tmp.replace(port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
