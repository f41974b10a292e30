"""TLS building blocks: ClientHello peeking, client identity, contexts, verification."""
