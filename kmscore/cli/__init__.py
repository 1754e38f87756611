"""The `kms` command line: one sub-command per KMS operation, plus front-end commands."""
