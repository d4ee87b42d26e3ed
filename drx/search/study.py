"""The Optuna study of a search: drx's record of what was tried, kept in step with the trial folders.

A search may be killed at any moment (Ctrl-C, SIGKILL, a lost node, a full disk) and rerun. Ray's
own restore files are snapshots taken every few seconds and written non-atomically, and Ray's
``OptunaSearch`` re-enqueues its start points into the persistent study on every start; trusting
them repeats configurations and leaves trials ``RUNNING`` forever. So drx resumes a search from
two things that are written as the work happens: the study (Optuna commits each ask, report and
tell) and the trial folders (Ray writes each epoch's result and checkpoint there). Before any
search run, :func:`reconcile` brings them into agreement:

* trials a dead driver left ``RUNNING`` are told ``FAIL`` with the reason (user attribute
  :data:`drx.experiment.LOST_ATTR`), and their configurations are re-queued (``WAITING``, with
  Optuna's ``failed_trial``/``retry_history`` system attributes) to continue from the trial
  folder's last checkpoint under the same trial name;
* a finished trial folder the study does not know (the study was moved aside as damaged, or the
  driver died between the trial's end and the tell) is added to the study from its results;
* the start point (the base config) is enqueued only if no study trial has its values;
* what is left of the budget (distinct configurations) is sampled new, by a sampler seeded from the
  study's trial count, so a continuation never replays the first run's draws.

Storage calls are retried with back-off on transient errors (a database locked by a reader past
SQLite's busy timeout, a network file system hiccup) instead of ending the search.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState

from drx.experiment import (
    LOST_ATTR, RECOVERED_ATTR, SEARCH_RUN, check_study_storage, last_result, latest_checkpoint, open_study_storage, run_folders,
    study_account, trial_progress,
)

#: How long a storage call is retried, in total, before the error ends the search (seconds).
STORAGE_RETRY_S = 600.0
#: The waits between retries (seconds); the last repeats.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


# ------------------------------------------------------------------------------ storage retries


#: Words of a database error that may pass by itself (SQLite's and the servers' wording).
TRANSIENT_WORDS = ("locked", "busy", "disk i/o", "unable to open", "connection", "connect", "timeout", "timed out", "server has gone away",
                   "deadlock", "try restarting transaction")


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may pass by itself: a locked or busy database, a lost connection, an
    I/O error of a network file system. Data and schema errors (integrity, a finished trial, a
    read-only or full database, a missing table) are not."""
    seen = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DisconnectionError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, sqlalchemy.exc.OperationalError):
            return any(word in str(seen.orig or seen).lower() for word in TRANSIENT_WORDS)
        if isinstance(seen, OSError) and not isinstance(seen, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def call_with_retries(fn: Callable[[], Any], what: str, where: str, say: Callable[[str], None] = print) -> Any:
    """``fn()``, retried with back-off (:data:`RETRY_DELAYS_S`) while it raises a transient storage
    error, for up to :data:`STORAGE_RETRY_S` in total; each retry is one line through `say`.
    Other errors, and a transient one past the limit, propagate."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            if waited + delay > STORAGE_RETRY_S:
                raise
            attempt += 1
            cause = exc.__cause__ or exc
            say(f"Optuna storage {where}: {what} failed ({type(cause).__name__}: {str(cause).splitlines()[0][:160]}); "
                f"retry {attempt} in {delay:g} s")
            time.sleep(delay)


def _retrying(name: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return call_with_retries(lambda: method(self, *args, **kwargs), name, self._drx_where())

    return call


def _storage_methods(cls: type) -> list[str]:
    """The storage API a study calls: BaseStorage's public methods and the private ones Optuna's
    caching layer calls on an RDB backend (each opens and commits its own transaction)."""
    public = [n for n in dir(BaseStorage) if not n.startswith("_") and n not in ("check_trial_is_updatable", "remove_session")]
    private = ["_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids"]
    return [n for n in public + private if inspect.isfunction(getattr(cls, n, None))]


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every call is retried on transient errors (see
    :func:`call_with_retries`). Each call is one transaction, rolled back when it fails, so a retry
    never applies a change twice. Pickles like RDBStorage (Ray pickles the searcher)."""

    def _drx_where(self) -> str:
        return str(self.url)


class RetryingJournalStorage(JournalStorage):
    """Optuna's JournalStorage whose every call is retried on transient (I/O) errors."""

    def _drx_where(self) -> str:
        backend = getattr(self, "_backend", None)
        return str(getattr(backend, "_file_path", "journal"))


for _cls in (RetryingRDBStorage, RetryingJournalStorage):
    for _name in _storage_methods(_cls.__mro__[1]):
        setattr(_cls, _name, _retrying(_name, getattr(_cls.__mro__[1], _name)))
del _cls, _name


def open_search_storage(url: str, say: Callable[[str], None] = print):
    """The study's storage for a search (the writer): first :func:`check_study_storage` (a torn
    file is moved aside or repaired, one line each through `say`), then
    :func:`drx.experiment.open_study_storage` with the retrying classes."""
    for line in check_study_storage(url):
        say(line)
    return call_with_retries(lambda: open_study_storage(url, rdb_class=RetryingRDBStorage, journal_class=RetryingJournalStorage),
                             "open", url, say)


# ------------------------------------------------------------------------------------- the ledger


def params_key(params: dict[str, Any], distributions: dict[str, Any]) -> str:
    """One configuration's identity: each searched key's value in Optuna's internal form (floats for
    numbers, the index for a choice), so 3 and 3.0, or a value read back from params.json and one
    read from the study, are the same configuration. Keys outside the space are ignored."""
    out = {}
    for key, dist in distributions.items():
        if key not in params:
            return json.dumps({k: params[k] for k in sorted(params) if k in distributions}, default=str)
        try:
            out[key] = float(dist.to_internal_repr(params[key]))
        except (ValueError, TypeError):
            out[key] = str(params[key])
    return json.dumps(out, sort_keys=True)


@dataclass
class Resume:
    """A configuration to continue: its trial folder's name and last checkpoint (None: from epoch 0)."""

    name: str
    params: dict[str, Any]
    checkpoint: str | None


@dataclass
class SearchLedger:
    """What :func:`reconcile` found and decided before a search run."""

    budget: int
    finished: dict[str, optuna.trial.FrozenTrial]  # params key -> the study trial that finished it
    resume: dict[str, Resume] = field(default_factory=dict)  # params key -> where it continues
    waiting: int = 0  # WAITING study trials (re-queued and start points) the run asks first
    new: int = 0  # configurations still to sample
    lines: list[str] = field(default_factory=list)  # one line per thing marked, recovered or re-queued

    @property
    def to_run(self) -> int:
        """Trials the next run starts: the waiting ones, then the new samples."""
        return self.waiting + self.new


def _folders(exp_dir: Path) -> dict[str, tuple[str, Path]]:
    """Search trial folders by name, across the run and its continuations (later runs supersede)."""
    found: dict[str, tuple[str, Path]] = {}
    for run in run_folders(exp_dir, SEARCH_RUN):
        for tdir in sorted(p for p in run.iterdir() if p.is_dir() and (p / "params.json").is_file()):
            state, _ = trial_progress(tdir)
            if state != "new" or tdir.name not in found:
                found[tdir.name] = (state, tdir)
    return found


def mark_abandoned(study: optuna.Study, reason: str) -> list[int]:
    """Tell every ``RUNNING`` trial FAIL, with `reason` in its :data:`LOST_ATTR` user attribute;
    returns their numbers. Only for a study no live driver is using (the caller holds the lock)."""
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr(LOST_ATTR, reason)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        numbers.append(t.number)
    return numbers


def _objective_of(result: dict[str, Any], objective: str) -> float | None:
    value = result.get(objective)
    if result.get("status") == "diverged" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def reconcile(study: optuna.Study, plan, exp_dir: Path, budget: int, start_points: list[dict[str, Any]]) -> SearchLedger:
    """Bring the study and the trial folders of ``exp_dir``'s search runs into agreement, and plan
    the next run (see the module's docstring). `budget` counts distinct configurations; a trial
    that raised past its retries or diverged counts as tried. Call with the driver lock held."""
    dists = plan.distributions
    objective = plan.spec.objective
    ledger = SearchLedger(budget, {})
    lost = mark_abandoned(study, "its driver (drx tune) was killed while the trial ran; drx continues its configuration "
                                 "from the trial's last checkpoint as a new trial")
    if lost:
        ledger.lines.append(f"study {study.study_name}: trial(s) {', '.join(f'#{n}' for n in lost)} left RUNNING by a killed driver: "
                            "marked FAIL (reason in user attribute drx_lost)")
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and LOST_ATTR not in t.user_attrs):
            ledger.finished.setdefault(params_key(t.params, dists), t)
    waiting = {params_key(t.params or t.system_attrs.get("fixed_params", {}), dists) for t in trials if t.state == TrialState.WAITING}
    lost_by_key = {params_key(t.params, dists): t for t in trials if t.state == TrialState.FAIL and LOST_ATTR in t.user_attrs}
    recovered = []
    for name, (state, tdir) in sorted(_folders(exp_dir).items()):
        params = json.loads((tdir / "params.json").read_text())
        key = params_key(params, dists)
        if key in ledger.finished:
            continue
        if state == "done":  # finished in Ray, unknown to the study: tell it what the folder holds
            result = last_result(tdir)
            value = _objective_of(result, objective)
            frozen = optuna.trial.create_trial(
                state=TrialState.COMPLETE if value is not None else TrialState.FAIL, value=value,
                params={k: params[k] for k in dists}, distributions=dists,
                user_attrs={RECOVERED_ATTR: f"added from {tdir} (epoch {result.get('epoch')})"})
            study.add_trial(frozen)
            ledger.finished[key] = frozen
            recovered.append(name)
            continue
        ckpt = latest_checkpoint(tdir)
        ledger.resume[key] = Resume(name, params, str(ckpt) if ckpt else None)
        if key not in waiting:
            _requeue(study, params, dists, lost_by_key.get(key), name)
            waiting.add(key)
    if recovered:
        ledger.lines.append(f"study {study.study_name}: {len(recovered)} finished trial(s) it did not know added from their folders "
                            f"({', '.join(recovered)})")
    for key, t in lost_by_key.items():  # lost before its folder held anything: it starts over
        if key not in ledger.finished and key not in waiting:
            _requeue(study, t.params, dists, t, None)
            waiting.add(key)
    if ledger.resume:
        ledger.lines.append(f"{len(ledger.resume)} unfinished search trial(s) continue from their last checkpoints: "
                            + ", ".join(f"{r.name} ({Path(r.checkpoint).name if r.checkpoint else 'from the start'})"
                                        for r in ledger.resume.values()))
    known = {params_key(t.params or t.system_attrs.get("fixed_params", {}), dists) for t in study.get_trials(deepcopy=False)}
    for point in start_points:
        if params_key(point, dists) not in known:  # optuna#3255, ray#11854: never enqueue a start point twice
            study.enqueue_trial(point)
            waiting.add(params_key(point, dists))
    ledger.waiting = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    ledger.new = max(0, budget - len(ledger.finished) - ledger.waiting)
    return ledger


def _requeue(study: optuna.Study, params: dict[str, Any], dists: dict[str, Any], lost: optuna.trial.FrozenTrial | None, name: str | None) -> None:
    """Add a WAITING trial with `params` (asked before any new sample), carrying on `lost`."""
    system: dict[str, Any] = {}
    if lost is not None:  # Optuna's own convention (RetryHeartbeatStaleTrialCallback.retried_trial_number)
        history = [*lost.system_attrs.get("retry_history", []), lost.number]
        system = {"failed_trial": lost.system_attrs.get("failed_trial", lost.number), "retry_history": history}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params={k: params[k] for k in dists}, distributions=dists,
        user_attrs={"drx_trial": name} if name else None, system_attrs=system or None))


def sampler_seed(seed: int, study: optuna.Study) -> int:
    """The sampler's seed for a run: the spec's seed on a fresh study, shifted by the number of
    trials the study holds, so a continuation does not draw the first run's samples again."""
    return int(seed) + len(study.get_trials(deepcopy=False))


def ranked_configurations(study: optuna.Study, distributions: dict[str, Any]) -> list[tuple[float, dict[str, Any], int]]:
    """(objective, params, trial number) of the study's COMPLETE trials with a finite objective,
    best first, each configuration once (its best trial): the confirm stage's candidates."""
    best: dict[str, tuple[float, dict[str, Any], int]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.value is None or not math.isfinite(t.value):
            continue
        key = params_key(t.params, distributions)
        if key not in best or t.value > best[key][0]:
            best[key] = (float(t.value), dict(t.params), t.number)
    return sorted(best.values(), key=lambda r: (-r[0], r[2]))


def describe_account(study: optuna.Study, retried: int = 0) -> str:
    """One line: how many study trials finished, were lost to a killed driver (and continued),
    were retried by Ray after an error, or failed."""
    a = study_account(study)
    parts = [f"{a['complete']} complete"]
    if a["pruned"]:
        parts.append(f"{a['pruned']} pruned")
    parts.append(f"{a['lost']} lost to a killed driver ({a['continued']} continued as new trials, from their last checkpoints)")
    parts.append(f"{retried} retried by Ray after an error")
    parts.append(f"{a['failed']} failed")
    if a["recovered"]:
        parts.append(f"{a['recovered']} recovered from trial folders")
    if a["running"] or a["waiting"]:
        parts.append(f"{a['running']} running, {a['waiting']} waiting")
    return f"study {study.study_name}: " + ", ".join(parts)
