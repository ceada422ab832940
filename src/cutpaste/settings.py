"""Kedro project settings."""

from cutpaste.hooks import RunEnvironmentHook
from cutpaste.tracking import MlflowTrackingHook

HOOKS = (RunEnvironmentHook(), MlflowTrackingHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"], "categories": ["categories*", "categories*/**"]},
}
