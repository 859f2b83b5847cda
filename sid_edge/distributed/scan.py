"""``ray_scan``: the local scan's rows, computed by Ray Data on one machine or a cluster."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sid_edge.artifact.manifest import Manifest, model_entry, read_manifest, verify_files
from sid_edge.distributed.inputs import InputPlan, group_units, plan_inputs
from sid_edge.distributed.results import OutputPaths, PartWriter, finish, prepare
from sid_edge.runtime.concept_ranking import DEFAULT_TOP_CONCEPTS
from sid_edge.runtime.detector import default_precision
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

#: Partition size: rows per parquet file (an interruption loses at most this many finished rows per run).
DEFAULT_PART_ROWS = 4096


#: Inputs per read/decode task (at least --batch-size).
UNITS_PER_TASK = 64

#: Memory (bytes) each read/decode task reserves from Ray's scheduler.
DECODE_TASK_MEMORY = 512 * 1024 * 1024


class ClusterError(RuntimeError):
    """Ray cannot be reached or the cluster cannot hold the requested actors; the message says which."""


class IncompleteScan(RuntimeError):
    """The run ended with inputs that have no row (Ray gave up on them); ``--resume`` scores what is missing."""


@dataclass
class RayScanSummary:
    """What a distributed scan did.

    ``files``: inputs (one row each in the output); ``scored``/``synthetic``/``errors``: counts over all rows;
    ``resumed``: rows already done by an earlier run; ``seconds``: wall time of this run (planning to the last
    row written); ``rows_this_run``: rows written by this run; ``retried_rows``: rows Ray scored more than once
    (re-executed after a failure; the extra copies were dropped); ``actors_started`` vs ``actors``: more starts than
    the pool size means Ray restarted actors; ``backends``: each started actor's backend description;
    ``first_row_s``: seconds from the start to the first scored batch (planning, Ray workers and actors starting,
    artifact loading).
    """

    files: int
    scored: int
    synthetic: int
    errors: int
    seconds: float
    resumed: int = 0
    rows_this_run: int = 0
    retried_rows: int = 0
    actors: int = 0
    actors_started: int = 0
    backends: list[str] = field(default_factory=list)
    threshold: float = 0.5
    parts: Path | None = None
    first_row_s: float = float("nan")

    @property
    def images_per_second(self) -> float:
        """Rows written by this run over its wall time."""
        return self.rows_this_run / self.seconds if self.seconds > 0 else float("nan")

    @property
    def actor_restarts(self) -> int:
        return max(0, self.actors_started - self.actors)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Start a local Ray instance (``address`` None or "local") or join a cluster (``auto``, ``ray://HOST:PORT``,
    ``HOST:PORT``). Uses the instance this process is already connected to, if any. Returns True when this call
    started the connection (the caller then shuts it down). Raises ClusterError with Ray's reason."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError from ray.init: all mean "no cluster there"
        where = "a local Ray instance" if address in (None, "local") else f"the Ray cluster at {address}"
        raise ClusterError(f"cannot start or join {where}: {type(e).__name__}: {e}") from None
    return True


def _ray_reason(e: BaseException) -> str:
    """The root cause inside a Ray error: the last ``module.Error: message`` line of its text (Ray appends the
    remote traceback), without terminal colours; else the first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Unavailable|Interrupt)\b.*?: ", ln)]
    return (causes[-1] if causes else f"{type(e).__name__}: {lines[0] if lines else ''}")[:800]


def _preflight(model_dir, precision: str | None) -> tuple[Manifest, str, str]:
    """Manifest checks on the driver before any Ray work: (manifest, precision, sha256 of the model file)."""
    manifest = read_manifest(model_dir)
    precision = precision or default_precision(manifest)
    entry = model_entry(manifest, precision)
    verify_files(model_dir, entry)
    return manifest, precision, entry.sha256


def ray_scan(
    paths: Sequence[str | os.PathLike],
    model_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    address: str | None = None,
    actors: int = 1,
    batch_size: int = 8,
    precision: str | None = None,
    backend: str = "auto",
    allow_fallback: bool = False,
    threshold: float | None = None,
    top_concepts: int = DEFAULT_TOP_CONCEPTS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    resume: bool = False,
    part_rows: int = DEFAULT_PART_ROWS,
    progress: bool | None = None,
    ledger_name: str | None = None,
    provenance: dict | None = None,
) -> RayScanSummary:
    """Score every input of ``paths`` (see :mod:`sid_edge.distributed.inputs`) on Ray Data; one row per input.

    Args:
        out: ``results.csv``/``.jsonl`` (written at the end, plus partitions in ``results.parquet/``) or
            ``results.parquet`` (partitions only); see :mod:`sid_edge.distributed.results`.
        address: None/"local" starts a local Ray instance; else a cluster address for ``ray.init``. An already
            connected process keeps its connection.
        actors: inference actors (fixed ``ActorPoolStrategy`` pool), each loading the artifact once.
        batch_size: images per inference call.
        precision, backend, allow_fallback, threshold, top_concepts, max_pixels: as ``sid-edge scan``.
        gpus_per_actor: GPUs each actor reserves; None: 1 when the cluster has GPUs, else 0 (with 0 Ray hides the
            GPUs from the actor and ``auto`` runs ONNX Runtime on CPU).
        cpus_per_actor: CPUs each actor reserves; also its ONNX Runtime intra-op threads (rounded, at least 1).
        resume: keep the rows of an earlier run with the same ``out`` and settings, score only the rest.
        part_rows: rows per partition file.
        progress: Ray Data's progress bars (None: Ray's default, bars on a terminal, periodic log lines otherwise).
        ledger_name: name for the ledger actor (default: a fresh one per run).
        provenance: None for no ``provenance`` field, else :class:`sid_edge.provenance.ProvenanceReader` options
            (``{"c2pa_trust": None, "check_watermark": False}`` is the local scan's default); read in the decode
            tasks from the file or its bytes.

    Returns a :class:`RayScanSummary`.

    Raises:
        ManifestError: the artifact is missing, malformed or its model file fails its sha256 (checked on the
            driver first, then again by every actor).
        InputError: an input that does not exist or cannot be read (named).
        ResultsError: ``out`` holds another run (use ``resume``) or a run with other settings.
        ClusterError: no Ray there, or the cluster has too few CPUs/GPUs for the actors plus one decode task.
        IncompleteScan: Ray gave up on some inputs; finished rows are kept and ``resume`` completes the run.
    """
    if batch_size < 1 or actors < 1 or part_rows < 1 or cpus_per_actor <= 0:
        raise ValueError("batch_size, actors and part_rows must be >= 1, cpus_per_actor > 0")
    start = time.perf_counter()
    manifest, precision, model_sha = _preflight(model_dir, precision)
    thr = float(manifest.threshold if threshold is None else threshold)
    concepts = bool(manifest.concept_names) and top_concepts > 0
    outputs = OutputPaths.for_out(out)
    plan: InputPlan = plan_inputs(paths)
    settings = {"model_sha256": model_sha, "precision": precision, "threshold": thr, "top_concepts": top_concepts,
                "max_pixels": max_pixels, "provenance": provenance}
    done = prepare(outputs, settings, resume)
    pending = plan.pending(done)
    resumed = len(done & set(plan.keys)) if done else 0

    ledger_info: dict = {"actors": [], "rows_scored": 0}
    writer = PartWriter(outputs.parts, {k for u in pending.units for k in u.keys()}, part_rows)
    if pending.units:
        started = connect(None if address in (None, "local") else address)
        try:
            ledger_info = _run(pending, writer, model_dir=str(Path(model_dir).absolute()), manifest=manifest,
                               precision=precision, backend=backend, allow_fallback=allow_fallback, threshold=thr,
                               top_concepts=top_concepts, max_pixels=max_pixels, actors=actors,
                               batch_size=batch_size, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                               progress=progress, ledger_name=ledger_name or f"sid-edge-ledger-{uuid.uuid4().hex}",
                               provenance=provenance)
        except ClusterError:
            raise
        except Exception as e:  # Ray gave up (retries exhausted, actors failing to start): keep what is done
            writer.flush()
            raise IncompleteScan(f"Ray stopped the run ({_ray_reason(e)}); {len(writer.written)} of "
                                 f"{len(writer.expected)} rows are saved in {outputs.parts}; fix the cause and rerun "
                                 f"with --resume") from e
        finally:
            writer.flush()
            if started:
                import ray

                ray.shutdown()
    missing = len(writer.expected) - len(writer.written)
    if missing:
        raise IncompleteScan(f"{missing} of {len(writer.expected)} inputs got no row (Ray gave up on them); "
                             f"{len(writer.written)} rows are saved in {outputs.parts}; rerun with --resume")
    first_row_s = float("nan") if writer.first_at is None else writer.first_at - start
    counts = finish(outputs, plan.keys, concepts, provenance is not None)
    if counts.missing:  # cannot happen after the check above unless partitions were removed meanwhile
        raise IncompleteScan(f"{counts.missing} inputs have no row in {outputs.parts}; rerun with --resume")
    return RayScanSummary(
        files=len(plan.keys), scored=counts.scored, synthetic=counts.synthetic, errors=counts.errors,
        seconds=time.perf_counter() - start, resumed=resumed, rows_this_run=len(writer.written),
        retried_rows=max(0, ledger_info["rows_scored"] - len(writer.written)), actors=actors if pending.units else 0,
        actors_started=len(ledger_info["actors"]), backends=sorted({a["backend"] for a in ledger_info["actors"]}),
        threshold=thr, parts=outputs.parts, first_row_s=first_row_s,
    )


def _run(pending: InputPlan, writer: PartWriter, *, model_dir: str, manifest: Manifest, precision: str, backend: str,
         allow_fallback: bool, threshold: float, top_concepts: int, max_pixels: int, actors: int, batch_size: int,
         gpus_per_actor: float | None, cpus_per_actor: float, progress: bool | None, ledger_name: str,
         provenance: dict | None) -> dict:
    import ray
    import ray.data

    from sid_edge.distributed.stages import Ledger, Scorer, decode_units, units_table

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if actors * gpus_per_actor > gpus:
        raise ClusterError(f"{actors} actor(s) x {gpus_per_actor:g} GPU need {actors * gpus_per_actor:g} GPUs; "
                           f"the cluster has {gpus:g}")
    if actors * cpus_per_actor + 1 > cpus:
        raise ClusterError(f"{actors} actor(s) x {cpus_per_actor:g} CPU plus 1 CPU for decoding need "
                           f"{actors * cpus_per_actor + 1:g} CPUs; the cluster has {cpus:g}: use fewer --actors")

    ctx = ray.data.DataContext.get_current()
    if progress is not None:
        ctx.enable_progress_bars = progress
    if progress is False:
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    ledger = ray.remote(num_cpus=0)(Ledger).options(name=ledger_name).remote()
    try:
        # Read tasks take UNITS_PER_TASK inputs (at least one batch): few enough objects for the driver to put
        # (10 M inputs -> ~160 k blocks), small enough that every CPU of a cluster gets work.
        blocks = [units_table(g) for g in group_units(pending.units, max(batch_size, UNITS_PER_TASK))]
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(
            # memory: what one decode task may need (an image at the default pixel limit is ~270 MB as RGB). Its
            # resource request also differs from the actors', which keeps Ray Data from fusing decoding into the
            # inference actors: decoding runs in parallel CPU tasks while the actors infer. A task whose worker
            # dies is retried by Ray (3 times by default).
            decode_units, batch_size=None, batch_format="pyarrow", num_cpus=1, memory=DECODE_TASK_MEMORY,
            fn_kwargs={"preprocessing": manifest.preprocessing.to_dict(), "max_pixels": max_pixels,
                       "rows_per_batch": batch_size, "provenance": provenance},
        )
        ds = ds.map_batches(
            Scorer, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
            fn_constructor_kwargs={"model_dir": model_dir, "precision": precision, "backend": backend,
                                   "allow_fallback": allow_fallback, "threshold": threshold,
                                   "top_concepts": top_concepts, "threads": max(1, round(cpus_per_actor)),
                                   "ledger": ledger_name},
        )
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
        return ray.get(ledger.snapshot.remote())
    finally:
        ray.kill(ledger)
