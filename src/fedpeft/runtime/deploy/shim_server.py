"""The ServerApp of a fedpeft deployment, copied into the Flower app folder as ``fedpeft_server_shim.py``.

``flwr run`` checks the component by importing its module in the CLI process; keeping fedpeft (and torch) out of
the module's top level keeps that check fast. The server program itself is :func:`fedpeft.runtime.deploy.server.main`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedpeft.runtime.deploy.server import serve

    serve(grid, context)
