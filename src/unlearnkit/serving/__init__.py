"""``unlearnkit serve``: an OpenAI-compatible HTTP endpoint for a model or a wrapped model, each guard decision logged.

:mod:`.app` holds the FastAPI app, the server and :func:`serving` (a background server for scripts and tests),
:mod:`.generation` the request-to-completion path and the one worker thread that calls the model, :mod:`.schemas`
the request bodies, :mod:`.log` the request log.
"""

from unlearnkit.serving.app import Server, ServeSettings, bind_socket, serving
from unlearnkit.serving.log import REQUESTS_FILE, SERVE_FILE, check_log_folder

__all__ = ["REQUESTS_FILE", "SERVE_FILE", "ServeSettings", "Server", "bind_socket", "check_log_folder", "serving"]
