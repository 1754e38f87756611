"""`kms up`: run a whole deployment from one config file, reload it live, stop it cleanly."""

from kmscore.deploy.plan import Plan, plan_reload
from kmscore.deploy.runner import Deployer
from kmscore.deploy.up import open_kms, run

__all__ = ["Deployer", "Plan", "open_kms", "plan_reload", "run"]
