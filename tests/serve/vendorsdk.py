"""The reference cloud's own SDK client (huaweicloudsdkkms) for the vendor tests: a
helper module, not a conftest addition, so that it merges with nobody's."""

from __future__ import annotations

from tests.serve.conftest import AccessKey, Server, kms

VENDOR_PROJECT = "0123456789abcdef0123456789abcdef"


def vendor_client(server: Server, key: AccessKey, project_id: str = VENDOR_PROJECT):
    """The vendor's SDK client, pointed at the server with an explicit endpoint:
    AK = access key id, SK = its secret."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkkms.v2 import KmsClient

    config = HttpConfig.get_default_config()
    config.retry_times = 0
    config.timeout = (10, 60)
    return (KmsClient.new_builder().with_http_config(config)
            .with_credentials(BasicCredentials(key.access_key_id, key.secret, project_id))
            .with_endpoint(server.url).build())


def disable_access_key(server: Server, key: AccessKey) -> None:
    """`kms access-key disable` (serve-core's); before that command is on the branch, the
    sealed row is rewritten through AccessKeys as the command would."""
    if kms(server.home, "access-key", "disable", key.access_key_id).returncode == 0:
        return
    import dataclasses

    from kmscore import Kms
    from kmsserve.auth.accesskeys import AccessKeys

    with Kms(server.home) as k:
        keys = AccessKeys(k)
        try:
            keys._put(dataclasses.replace(keys.require(key.access_key_id), enabled=False))
        finally:
            keys.close()
