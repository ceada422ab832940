"""Kedro project settings."""

from cutpaste.hooks import MlflowTrackingHook, ProjectParamsHook

HOOKS = (ProjectParamsHook(), MlflowTrackingHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}
