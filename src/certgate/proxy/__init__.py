"""The proxy: client connections, upstream pool, one request relay, tunnels."""
