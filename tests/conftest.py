"""The whole suite runs on Python >= 3.12. On the oldest declared Python (3.11) the
sidecar cannot be installed (mitmproxy 12 needs 3.12), so its tests, and the end-to-end
tests that run proxies, are not collected there; everything else (kmscore, fsmount)
must pass on both. See .ci/run."""

import importlib.util

collect_ignore: list[str] = []
if importlib.util.find_spec("mitmproxy") is None:
    collect_ignore += ["sidecar", "e2e"]
