"""One mitmproxy addon per concern, in hook order: routing, transform, signing, metrics.

They share a `Runtime` (the Kms, the live route tables, a clock) and per-flow
`FlowState` kept in `flow.metadata`. The hooks only translate mitmproxy's flow objects
into calls of the pure modules (rules, fields, tokens, httpsig) and the envelope format.
"""

from sidecar.addons.metrics import Metrics
from sidecar.addons.routing import FlowState, Routing, Runtime, state_of
from sidecar.addons.signing import Signing
from sidecar.addons.transform import Transform

__all__ = ["FlowState", "Metrics", "Routing", "Runtime", "Signing", "Transform", "state_of"]
