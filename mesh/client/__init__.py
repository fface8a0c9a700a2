"""The typed Python client for the whole mesh (docs/client.md).

::

    from mesh.client import Mesh

    async with Mesh.connect("nats://127.0.0.1:4222", tenant="acme", user="alice") as mesh:
        answer = await mesh.gateway.generate(messages=[{"role": "user", "content": "Hi"}])
        async for chunk in mesh.gateway.stream(messages=[...]):
            ...

One method per operation, generated from the operation declarations
(``schemas/<service>.py``; ``python -m mesh.client.codegen`` regenerates
``_services.py``), each returning the operation's response model and raising the
typed :mod:`bus.errors` exceptions.
"""

from mesh.client._base import DynamicService, OperationCall, Service, build_request
from mesh.client._mesh import Mesh, services

__all__ = ["DynamicService", "Mesh", "OperationCall", "Service", "build_request", "services"]
