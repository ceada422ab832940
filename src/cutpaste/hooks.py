"""Project hooks other than tracking (MLflow tracking lives in :mod:`cutpaste.tracking`)."""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class RunEnvironmentHook:
    """Makes the pipeline registry read the run's configuration environment.

    Kedro builds the registry after the context exists, from :mod:`cutpaste.registration`, which reads
    ``KEDRO_ENV``. ``kedro run --env=paper`` names the environment on the command line only; this hook
    exports it as ``KEDRO_ENV`` (Kedro's own variable for it, which ``kedro ipython --env`` sets the
    same way) so that the categories and grids come from the same environment as the parameters.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        env = context.env or os.environ.get("KEDRO_ENV")
        if env and os.environ.get("KEDRO_ENV") != env:
            logger.debug("KEDRO_ENV=%s for the pipeline registry", env)
            os.environ["KEDRO_ENV"] = env
