"""Mutual TLS for the Python side of the interop tests, with the demo certificates that
scripts/gen-certs.sh writes (ca.pem, server.pem/key, client.pem/key).

Each script takes `--tls DIR` anywhere among its arguments; without it, it runs in
plaintext as the article wrote it.
"""

import grpc


def take_flag(argv):
    """Removes `--tls DIR` from argv; returns DIR, or None."""
    if "--tls" not in argv:
        return None
    i = argv.index("--tls")
    directory = argv[i + 1]
    del argv[i : i + 2]
    return directory


def _read(directory, name):
    with open(f"{directory}/{name}", "rb") as f:
        return f.read()


def channel(target, options, directory):
    """An insecure channel, or with DIR one that trusts DIR/ca.pem and shows the client
    certificate (mutual TLS)."""
    if directory is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(directory, "ca.pem"),
        private_key=_read(directory, "client.key"),
        certificate_chain=_read(directory, "client.pem"),
    )
    return grpc.secure_channel(target, credentials, options=options)


def add_port(server, address, directory):
    """Listens in plaintext, or with DIR on TLS requiring a client certificate signed by
    DIR/ca.pem."""
    if directory is None:
        server.add_insecure_port(address)
        return
    credentials = grpc.ssl_server_credentials(
        [(_read(directory, "server.key"), _read(directory, "server.pem"))],
        root_certificates=_read(directory, "ca.pem"),
        require_client_auth=True,
    )
    server.add_secure_port(address, credentials)
