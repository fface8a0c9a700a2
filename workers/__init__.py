"""One package per service. A worker never imports another worker: services talk over the bus."""
