"""keyhold's HTTP front end: an embedded mitmproxy that encrypts, decrypts, signs and
verifies bodies by rule, failing closed. See docs/formats/sidecar.md for the wire formats."""
