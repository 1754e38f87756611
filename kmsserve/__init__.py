"""kms serve: the Kms facade over the network.

    wire.py        what every wire API is made of (a table of operations) and the one
                   dispatcher that interprets any such table (sans-IO)
    apis/          one module per wire API, each a table: aws (AWS KMS JSON 1.1),
                   vendor (the reference cloud's KMS v1.0), facade (keyhold's own, used by
                   kmscore.remote so that front ends on other hosts run unchanged)
    auth/          request signing (sigv4, sdkhmac), access keys, policies, replay
    app.py         the ASGI app: bytes in, the right API's dispatcher, bytes out
    server.py      uvicorn, TLS, `kms serve`
"""
