"""The facade operations a server offers, by the facade's own names: what policies name
and what every wire API's table maps onto. Not offered over the network: the store's
own maintenance (verify_store, reanchor_store, audit reading), which stay on the host."""

from __future__ import annotations

FACADE_OPERATIONS = frozenset(
    """
    create_key describe_key list_keys enable_key disable_key schedule_key_deletion
    cancel_key_deletion update_key_alias update_key_description enable_key_rotation
    disable_key_rotation rotate_key encrypt_data decrypt_data create_datakey
    encrypt_datakey decrypt_datakey sign verify get_public_key generate_mac verify_mac
    gen_random get_parameters_for_import import_key_material delete_imported_key_material
    key_usable default_key
    """.split()
)
