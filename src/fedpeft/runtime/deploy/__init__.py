"""The ``deploy`` runtime: fedpeft on Flower's deployment engine (SuperLink, SuperNodes, ``flwr run``).

- :mod:`.certs`: CA, SuperLink certificate and SuperNode keys (``fedpeft deploy certs``);
- :mod:`.cluster`: process commands, the Flower app folder, and the supervised loopback :class:`LocalCluster`;
- :mod:`.grid`: :class:`DeployGrid`, the server's FlowerGrid for nodes that die and come back;
- :mod:`.runtime`: :func:`run_deploy`, the runtime behind ``fedpeft run --runtime deploy``;
- :mod:`.server`: the server program run by the ServerApp; :mod:`.worker`: the long-lived per-node worker;
- ``shim_client.py`` / ``shim_server.py``: the ClientApp and ServerApp modules shipped inside the Flower app.

Importing this package does not import flwr; importing :mod:`.runtime` does (ImportError when it is missing).
"""
