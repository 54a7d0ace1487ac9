"""What a hyperparameter search optimizes: the run's value of `optimized_metric`.

`run(cfg)` returns `objective(cfg, summary)` to Hydra sweepers (Optuna: `hparams_search=optuna`). The metric is
named like the logged metrics (`val/acc`, `test/acc`, ...) or by its summary.json key (`val_acc`, ...).
`check_optimized_metric(cfg)` runs before any data is loaded, so a typo fails in seconds, not after a trial.

Selecting hyperparameters on the test set overstates the result; `val/*` metrics need a validation split held out
of the training set (`data.val_fraction=0.1`), which the Optuna presets turn on.
"""
from __future__ import annotations

import functools
import math
import sys

from loguru import logger

from layerwise.errors import ConfigError
from layerwise.hydra_job import is_multirun

DEFAULT_METRIC = "test/acc"

# optimized_metric -> summary.json key.
METRICS: dict[str, str] = {
    "val/acc": "val_acc",
    "best_val_acc": "best_val_acc",
    "val/loss": "val_loss",
    "test/acc": "test_acc",
    "best_test_acc": "best_test_acc",
    "test/loss": "test_loss",
}
# The summary keys are accepted too (`val_acc` = `val/acc`).
ALIASES: dict[str, str] = {key: name for name, key in METRICS.items() if key != name}
MINIMIZED = {"val/loss", "test/loss"}
NEEDS_VAL_SPLIT = {"val/acc", "best_val_acc", "val/loss"}


def metric_name(cfg) -> str:
    """The canonical name of `cfg.optimized_metric` (absent or null: test/acc); ConfigError when unknown."""
    raw = cfg.get("optimized_metric") if hasattr(cfg, "get") else None
    name = DEFAULT_METRIC if raw is None else str(raw).strip()
    name = ALIASES.get(name, name)
    if name not in METRICS:
        raise ConfigError(f"optimized_metric={raw!r} is not known; choose one of {', '.join(METRICS)}")
    return name


def _sweeper_direction():
    """The running Hydra sweeper's `direction` (a single one), or None outside such a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        direction = HydraConfig.get().sweeper.get("direction")
    except Exception:  # noqa: BLE001 - no Hydra, or a sweeper without the key
        return None
    direction = getattr(direction, "name", direction)  # the plugin's Direction enum, or a plain string
    return direction.lower() if isinstance(direction, str) else None


def check_optimized_metric(cfg, direction=None) -> str:
    """Before training: the metric is known, its split exists, and the sweeper optimizes it the right way.

    `direction`: the sweeper's (maximize | minimize); None reads it from the running Hydra sweep, if any.
    Returns the metric's canonical name.
    """
    from layerwise.data.options import check_val_fraction

    name = metric_name(cfg)
    data = cfg.get("data") if hasattr(cfg, "get") else None
    fraction = check_val_fraction(data) if data is not None else 0.0
    if name in NEEDS_VAL_SPLIT and fraction <= 0:
        raise ConfigError(f"optimized_metric={name} needs a validation split held out of the training set; "
                          f"set data.val_fraction=0.1 (or optimize test/acc)")
    direction = _sweeper_direction() if direction is None else getattr(direction, "name", direction)
    direction = direction.lower() if isinstance(direction, str) else None
    wanted = "minimize" if name in MINIMIZED else "maximize"
    if direction in ("minimize", "maximize") and direction != wanted:
        raise ConfigError(f"optimized_metric={name} should be {wanted[:-1]}ed but hydra.sweeper.direction="
                          f"{direction}; set hydra.sweeper.direction={wanted}")
    return name


def objective(cfg, summary: dict) -> float:
    """The run's value of `optimized_metric` from its summary. NaN when the run has none (e.g. it stopped before
    its first evaluation): Optuna records such a trial as failed and the search goes on."""
    name = check_optimized_metric(cfg)
    value = summary.get(METRICS[name])
    if value is None or (isinstance(value, float) and math.isnan(value)):
        logger.log("WARNING" if is_multirun() else "DEBUG",
                   f"optimized_metric={name}: the run (status {summary.get('status')}) has no value; "
                   f"returning NaN (a sweeper counts the trial as failed)")
        return float("nan")
    return float(value)


def check_search_space(config) -> None:
    """Every key of `hydra.sweeper.params` exists in the composed config (else one line naming the fix)."""
    from omegaconf import OmegaConf

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    missing = object()
    for key in params:
        key = str(key)
        if key.startswith(("+", "~", "hydra.")) or "/" in key:  # additions, deletions, Hydra's own, groups
            continue
        if OmegaConf.select(config, key.lstrip("+"), default=missing) is missing:
            method = OmegaConf.select(config, "method.name")
            fix = ("use hparams_search=optuna for rules without aux heads (method.aux.* exists for dgl, ssl, "
                   "infopro)" if key.startswith("method.aux.") else "check the key's spelling, or drop it")
            raise ConfigError(f"the search space (hydra.sweeper.params) has {key}, which the config with "
                              f"method={method} does not have; {fix}")


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class SearchCheck(_HydraCallback):
    """Hydra callback of the `hparams_search` presets: checks `optimized_metric` once, before the first trial.

    (Each job checks again, but a failing job only fails its trial; this stops the whole search at once.)
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            check_optimized_metric(config, config.hydra.sweeper.get("direction"))
            check_search_space(config)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        patch_optuna_failed_trials()
        optuna_log_follows_console_colours()
        _NO_COMPLETED_TRIAL.clear()  # one flag per search (several may run in one process, e.g. tests)
        patch_optuna_no_completed_trial()

    def on_multirun_end(self, config, **kwargs) -> None:
        # Hydra ends callbacks in reverse order, so this runs before the runs report (layerwise.reporting.report),
        # which lists every failed job and exits 1. Without that report a search with no result must still not exit 0.
        callbacks = config.hydra.get("callbacks") or {}
        reported = any(str(c.get("_target_", "")).endswith("RunReportCallback") for c in callbacks.values() if c)
        if _NO_COMPLETED_TRIAL and not reported:
            print(f"error: {NO_COMPLETED_TRIAL_LINE}; see <job dir>/run.log of each job in {config.hydra.sweep.dir}",
                  file=sys.stderr)
            raise SystemExit(1)


def optuna_log_follows_console_colours() -> None:
    """Optuna's own lines ("A new study created ...") follow the console's colour rules (runlog.use_color): its
    default handler's colorlog formatter is given no stream, so it colours a pipe or a Slurm log too."""
    import logging

    import optuna

    from layerwise.runlog import use_color

    if use_color(sys.stderr):
        return
    optuna.logging.disable_default_handler()
    root = logging.getLogger("optuna")
    if not any(getattr(h, "layerwise_plain", False) for h in root.handlers):
        handler = logging.StreamHandler()  # stderr, as optuna's own
        handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s] %(message)s"))
        handler.layerwise_plain = True
        root.addHandler(handler)


def patch_optuna_failed_trials() -> bool:
    """Let a trial that returns NaN fail without ending the search (hydra-optuna-sweeper <= 1.3.0).

    Optuna refuses NaN as a trial's value; the plugin then re-tells the trial as FAILED but passes the NaN values
    again, which Optuna also refuses, and that second error ends the whole sweep (facebookresearch/hydra#2237;
    fixed upstream by passing no values, hydra#3451, not in a release as of 1.3.0). This drops the values of a
    FAILED/PRUNED tell, the same fix, in this process only. Returns whether the patch is (now) in place.
    """
    try:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper import __version__ as plugin_version
        from optuna.trial import TrialState
    except ImportError:
        return False
    tell = optuna.study.Study.tell
    if getattr(tell, "_drops_failed_values", False):
        return True
    if tuple(int(p) for p in plugin_version.split(".")[:3] if p.isdigit()) > (1, 3, 0):
        return False  # a later release: assume it carries the upstream fix

    @functools.wraps(tell)
    def tell_failed_without_values(self, trial, values=None, state=TrialState.COMPLETE, *args, **kwargs):
        if state in (TrialState.FAIL, TrialState.PRUNED):
            values = None
        return tell(self, trial, values, state, *args, **kwargs)

    tell_failed_without_values._drops_failed_values = True
    optuna.study.Study.tell = tell_failed_without_values
    return True


NO_COMPLETED_TRIAL_LINE = ("no trial of the search completed, so it has no best parameters "
                           "(optimization_results.yaml is not written)")
_NO_COMPLETED_TRIAL: list[bool] = []  # set by the patched sweep, read by SearchCheck.on_multirun_end


def patch_optuna_no_completed_trial() -> bool:
    """A search whose trials all failed ends with the failed-jobs report, not Optuna's traceback.

    The sweeper asks the study for its best trial after the last one; with none completed Optuna raises
    ValueError("No trials are completed yet"), which Hydra prints as a traceback before any callback reports the
    jobs. This lets the sweep end normally in that case (only), so `on_multirun_end` lists every job's error and
    exits non-zero. Returns whether the patch is (now) in place.
    """
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return False
    sweep = OptunaSweeperImpl.sweep
    if getattr(sweep, "_reports_no_completed_trial", False):
        return True

    @functools.wraps(sweep)
    def sweep_without_best_trial(self, arguments):
        try:
            return sweep(self, arguments)
        except ValueError as err:
            if "no trials are completed" not in str(err).lower():
                raise
            _NO_COMPLETED_TRIAL.append(True)
            logger.error(NO_COMPLETED_TRIAL_LINE)

    sweep_without_best_trial._reports_no_completed_trial = True
    OptunaSweeperImpl.sweep = sweep_without_best_trial
    return True
